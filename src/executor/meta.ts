import { type BuildMeta, type ContractProblem, checkBuildMeta, checkDispatchPayload, type DispatchPayload } from "../contract/dispatch.js";
import { ExecutorError } from "./errors.js";

/** Validates dispatch meta; throws a one-line `bad_environment` error naming the Nomad variables. */
export function validateBuildMeta(raw: Record<string, unknown>): BuildMeta {
  const checked = checkBuildMeta(raw);
  if (checked.ok) return checked.value;
  throw new ExecutorError("bad_environment", `invalid dispatch meta: ${describe(checked.problems, "NOMAD_META_")}`);
}

/** Validates the dispatch payload; the message never repeats the payload's values. */
export function validateDispatchPayload(raw: unknown): DispatchPayload {
  const checked = checkDispatchPayload(raw);
  if (checked.ok) return checked.value;
  throw new ExecutorError("bad_environment", `invalid dispatch payload: ${describe(checked.problems, "")}`);
}

function describe(problems: readonly ContractProblem[], prefix: string): string {
  return problems.map((p) => `${p.path ? prefix + p.path : "(root)"}: ${p.message}`).join("; ");
}
