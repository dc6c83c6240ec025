import { z } from "zod";

/** States the create-status API accepts on every supported Gitea and Forgejo version (`skipped` is newer). */
export const CommitState = z.enum(["pending", "success", "error", "failure", "warning"]);
export type CommitState = z.infer<typeof CommitState>;

/** One commit status as Gitea returns it; its state is under `status`, not `state`. */
export const CommitStatus = z.object({
  id: z.number(),
  status: z.string(),
  context: z.string(),
  description: z.string().nullish(),
  target_url: z.string().nullish(),
});
export type CommitStatus = z.infer<typeof CommitStatus>;

/** The combined status of a ref: the latest status per context; `state` is "" when there is none. */
export const CombinedStatus = z.object({
  state: z
    .string()
    .nullish()
    .transform((s) => s ?? ""),
  sha: z.string().nullish(),
  total_count: z.number().nullish(),
  statuses: z
    .array(CommitStatus)
    .nullish()
    .transform((s) => s ?? []),
});
export type CombinedStatus = z.infer<typeof CombinedStatus>;

export const Version = z.object({ version: z.string() });
export type Version = z.infer<typeof Version>;

/** Gitea's error body: `{"message": "...", "url": "..."}`. */
export const ApiError = z.object({ message: z.string() });
export type ApiError = z.infer<typeof ApiError>;
