import type { Build, BuildReader, StopReason } from "../builds/backend.js";
import type { ConsulClient } from "../consul/client.js";

/** Where the reason a policy stopped a build is kept, so every replica shows it (Nomad's stop carries none). */
export interface StopMarks {
  get(id: string, signal?: AbortSignal): Promise<StopReason | undefined>;
  put(id: string, why: StopReason, signal?: AbortSignal): Promise<void>;
  /**
   * Deletes the marks of builds the backend no longer has (`exists` says no): by then the reason is in the
   * archive's record, or the build is gone for every reader. Returns how many it deleted.
   */
  prune(exists: (id: string, signal?: AbortSignal) => Promise<boolean>, signal?: AbortSignal): Promise<number>;
}

const REMEMBERED = 4096;

/**
 * Stop reasons in Consul KV, `<prefix>/stopped/<build id>` → `{"state","reason"}`: one small key per build a
 * policy stopped, written before the stop, so a replica that sees the build cancelled finds the key (or
 * knows there is none and remembers that).
 */
export function createConsulStopMarks(options: { consul: ConsulClient; prefix: string }): StopMarks {
  const known = new Map<string, StopReason | null>();
  const remember = (id: string, why: StopReason | null) => {
    known.set(id, why);
    if (known.size > REMEMBERED) known.delete(known.keys().next().value as string);
  };
  const keyOf = (id: string) => `${options.prefix}/stopped/${id}`;
  return {
    async get(id, signal) {
      const cached = known.get(id);
      if (cached !== undefined) return cached ?? undefined;
      const { entries } = await options.consul.get(keyOf(id), signal === undefined ? {} : { signal });
      const why = parseStopReason(entries?.[0]?.value?.toString("utf8"));
      remember(id, why ?? null);
      return why;
    },
    async put(id, why, signal) {
      await options.consul.put(keyOf(id), JSON.stringify(why), signal === undefined ? {} : { signal });
      remember(id, why);
    },
    async prune(exists, signal) {
      const dir = keyOf("");
      const { entries } = await options.consul.get(dir, { recurse: true, ...(signal === undefined ? {} : { signal }) });
      let deleted = 0;
      for (const entry of entries ?? []) {
        const id = entry.key.slice(dir.length);
        if (id === "" || (await exists(id, signal))) continue;
        // Check-and-set: a mark rewritten since the listing (a build stopped again) stays.
        if (await options.consul.delete(entry.key, { cas: entry.modifyIndex, ...(signal === undefined ? {} : { signal }) })) deleted++;
        known.delete(id);
      }
      return deleted;
    },
  };
}

function parseStopReason(text: string | undefined): StopReason | undefined {
  if (text === undefined) return undefined;
  try {
    const v = JSON.parse(text) as Partial<StopReason>;
    if ((v.state === "cancelled" || v.state === "error") && typeof v.reason === "string") return { state: v.state, reason: v.reason };
  } catch {
    // A key someone wrote by hand: the build shows as Nomad says.
  }
  return undefined;
}

/** A cancelled build as a policy's stop left it: its recorded state and reason, when there is one. */
export async function withStopReason(build: Build, marks: StopMarks, signal?: AbortSignal): Promise<Build> {
  if (build.state !== "cancelled") return build;
  const why = await marks.get(build.id, signal);
  return why === undefined ? build : { ...build, state: why.state, reason: why.reason };
}

/** A reader whose builds carry the stop reasons of `marks`, and whose `cancel(id, signal, why)` records `why` first. */
export function createMarkedReader(reader: BuildReader, marks: StopMarks): BuildReader {
  return {
    async listBuilds(filter, signal) {
      const page = await reader.listBuilds(filter, signal);
      const builds = await Promise.all(page.builds.map((b) => withStopReason(b, marks, signal)));
      // A timed-out build is `cancelled` to Nomad and `error` here: it leaves a `state=cancelled` page.
      return { ...page, builds: builds.filter((b) => filter.state === undefined || b.state === filter.state) };
    },
    async getBuild(id, signal) {
      const build = await reader.getBuild(id, signal);
      return build === undefined ? undefined : withStopReason(build, marks, signal);
    },
    logs: (id, request) => reader.logs(id, request),
    async cancel(id, signal, why) {
      if (why !== undefined) await marks.put(id, why, signal);
      await reader.cancel(id, signal);
    },
  };
}
