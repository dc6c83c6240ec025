/**
 * Keys whose object values are keyed by data (meta keys, task names, group names, driver config), not by a Go
 * struct's field names: for these only the values present on both sides are compared.
 */
const MAP_FIELDS = new Set([
  "Meta",
  "Details",
  "TaskStates",
  "Summary",
  "Config",
  "Env",
  "Tasks",
  "TaskLifecycles",
  "TaskResources",
  "FailedTGAllocs",
  "ClassFiltered",
  "ConstraintFiltered",
  "DimensionExhausted",
  "ClassExhausted",
  "QuotaExhausted",
  "ScoreMetaData",
  "ResourcesExhausted",
  "NodesAvailable",
  "QueuedAllocations",
  "PlanAnnotations",
  "DesiredTGUpdates",
]);

function jsonType(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  return typeof value;
}

/**
 * Differences between the JSON shape of `recorded` and `actual`: the same field names and the same JSON types at
 * every level. Arrays are compared by element shape: every element of `actual` against the first recorded one.
 */
export function shapeDiff(recorded: unknown, actual: unknown, path = "$", out: string[] = []): string[] {
  const rt = jsonType(recorded);
  const at = jsonType(actual);
  if (rt !== at) {
    out.push(`${path}: recorded ${rt}, fake ${at}`);
    return out;
  }
  if (rt === "array") {
    const rec = recorded as unknown[];
    const act = actual as unknown[];
    if (rec.length > 0) for (const [i, el] of act.entries()) shapeDiff(rec[i] ?? rec[0], el, `${path}[${i}]`, out);
    return out;
  }
  if (rt !== "object") return out;
  const rec = recorded as Record<string, unknown>;
  const act = actual as Record<string, unknown>;
  const key = path.slice(path.lastIndexOf(".") + 1);
  if (MAP_FIELDS.has(key)) {
    for (const k of Object.keys(rec)) if (k in act) shapeDiff(rec[k], act[k], `${path}.${k}`, out);
    return out;
  }
  for (const k of Object.keys(rec)) {
    if (!(k in act)) out.push(`${path}.${k}: missing in the fake`);
    else shapeDiff(rec[k], act[k], `${path}.${k}`, out);
  }
  for (const k of Object.keys(act)) if (!(k in rec)) out.push(`${path}.${k}: not in the recording`);
  return out;
}
