// Fields a real Nomad fills in when it canonicalizes a job, allocation or task event, and that the fake has no
// behaviour for. The values are those of test/fixtures/nomad (job.parent, allocation, job.allocations), recorded
// from Nomad v2.0.6-dev; see hashicorp/nomad api/jobs.go `Canonicalize` and nomad/structs/structs.go
// (https://github.com/hashicorp/nomad/blob/main/api/jobs.go, https://github.com/hashicorp/nomad/blob/main/nomad/structs/structs.go).

export const JOB_DEFAULTS: Record<string, unknown> = {
  Affinities: null,
  AllAtOnce: false,
  Constraints: null,
  ConsulNamespace: "",
  Multiregion: null,
  NodePool: "default",
  NomadTokenID: "",
  Region: "global",
  Spreads: null,
  Stable: false,
  UI: null,
  Update: {
    AutoPromote: false,
    AutoRevert: false,
    Canary: 0,
    HealthCheck: "",
    HealthyDeadline: 0,
    MaxParallel: 0,
    MinHealthyTime: 0,
    ProgressDeadline: 0,
    Stagger: 0,
  },
  VaultNamespace: "",
  VersionTag: null,
};

export const GROUP_DEFAULTS: Record<string, unknown> = {
  Affinities: null,
  Constraints: null,
  Consul: null,
  Disconnect: null,
  EphemeralDisk: {
    Migrate: false,
    SizeMB: 300,
    Sticky: false,
  },
  MaxClientDisconnect: null,
  MaxRunDuration: null,
  Meta: null,
  Migrate: null,
  Networks: null,
  PreventRescheduleOnLost: false,
  ReschedulePolicy: {
    Attempts: 0,
    Delay: 5000000000,
    DelayFunction: "constant",
    Interval: 86400000000000,
    MaxDelay: 0,
    Unlimited: false,
  },
  RestartPolicy: {
    Attempts: 0,
    Delay: 15000000000,
    Interval: 86400000000000,
    Mode: "fail",
    RenderTemplates: false,
  },
  Scaling: null,
  Services: null,
  ShutdownDelay: null,
  Spreads: null,
  StopAfterClientDisconnect: null,
  Update: null,
  Volumes: null,
};

export const TASK_DEFAULTS: Record<string, unknown> = {
  Actions: null,
  Affinities: null,
  Artifacts: null,
  CSIPluginConfig: null,
  Constraints: null,
  Consul: null,
  Env: null,
  Identities: null,
  Identity: {
    Audience: ["nomadproject.io"],
    ChangeMode: "",
    ChangeSignal: "",
    Env: false,
    ExtraClaims: null,
    File: false,
    Filepath: "",
    Name: "default",
    ServiceName: "",
    TTL: 0,
  },
  KillSignal: "",
  KillTimeout: 5000000000,
  Kind: "",
  Leader: false,
  Lifecycle: null,
  LogConfig: {
    Disabled: false,
    MaxFileSizeMB: 10,
    MaxFiles: 10,
  },
  Meta: null,
  Resources: {
    CPU: 100,
    Cores: 0,
    Devices: null,
    DiskMB: 0,
    IOPS: 0,
    MemoryMB: 64,
    MemoryMaxMB: 0,
    NUMA: null,
    Networks: null,
    SecretsMB: 0,
  },
  RestartPolicy: {
    Attempts: 0,
    Delay: 15000000000,
    Interval: 86400000000000,
    Mode: "fail",
    RenderTemplates: false,
  },
  ScalingPolicies: null,
  Schedule: null,
  Secrets: null,
  Services: null,
  ShutdownDelay: 0,
  Templates: null,
  User: "",
  Vault: null,
  VolumeMounts: null,
};

/** `structs.Allocation` fields the fake leaves at their zero value (scheduling metrics, networking, workload identity). */
export const ALLOC_DEFAULTS: Record<string, unknown> = {
  Metrics: {
    AllocationTime: 0,
    ClassExhausted: null,
    ClassFiltered: null,
    CoalescedFailures: 0,
    ConstraintFiltered: null,
    DimensionExhausted: null,
    NodePool: "default",
    NodesAvailable: {
      dc1: 1,
    },
    NodesEvaluated: 1,
    NodesExhausted: 0,
    NodesFiltered: 0,
    NodesInPool: 1,
    QuotaExhausted: null,
    ResourcesExhausted: null,
    ScoreMetaData: [],
    Scores: null,
  },
  NetworkStatus: {
    Address: "",
    AddressIPv6: "",
    DNS: null,
    InterfaceName: "",
  },
  SharedResources: {
    CPU: 0,
    Cores: 0,
    Devices: null,
    DiskMB: 300,
    IOPS: 0,
    MemoryMB: 0,
    MemoryMaxMB: 0,
    NUMA: null,
    Networks: null,
    SecretsMB: 0,
  },
  SigningKeyID: "",
};

/** The deprecated flat fields every `structs.TaskEvent` still carries next to `Details`. */
export const TASK_EVENT_DEFAULTS: Record<string, unknown> = {
  DiskLimit: 0,
  DownloadError: "",
  DriverError: "",
  DriverMessage: "",
  ExitCode: 0,
  FailedSibling: "",
  FailsTask: false,
  GenericSource: "",
  KillError: "",
  KillReason: "",
  KillTimeout: 0,
  RestartReason: "",
  SetupError: "",
  Signal: 0,
  StartDelay: 0,
  TaskSignal: "",
  TaskSignalReason: "",
  ValidationError: "",
  VaultError: "",
};

/** `structs.DesiredTransition`: every field a nil pointer until something asks for a transition. */
export const DESIRED_TRANSITION = {
  ForceReschedule: null,
  Migrate: null,
  MigrateDisablePlacement: null,
  NoShutdownDelay: null,
  Reschedule: null,
};

/** Puts `defaults` under `value`: missing keys get a copy of the default, nested plain objects are merged. */
export function withDefaults<T extends Record<string, unknown>>(value: T, defaults: Record<string, unknown>): T {
  const out: Record<string, unknown> = { ...value };
  for (const [k, d] of Object.entries(defaults)) {
    const v = out[k];
    if (!(k in out)) out[k] = structuredClone(d);
    else if (isPlain(v) && isPlain(d)) out[k] = withDefaults(v, d);
  }
  return out as T;
}

function isPlain(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}
