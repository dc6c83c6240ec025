import { randomBytes } from "node:crypto";
import { mkdir, readdir, readFile, rename, rm, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { z } from "zod";
import { BUILD_STATES } from "../builds/backend.js";

/** What single-machine mode keeps of one build, in `<data dir>/builds/<encoded id>/build.json`. */
export const BuildRecord = z.object({
  id: z.string(),
  builder: z.string(),
  meta: z.record(z.string(), z.string()),
  idempotencyToken: z.string(),
  state: z.enum(BUILD_STATES),
  reason: z.string().optional(),
  exitCode: z.number().int().optional(),
  createdAt: z.string(),
  startedAt: z.string().optional(),
  finishedAt: z.string().optional(),
  pid: z.number().int().optional(),
  /** NOMAD_ALLOC_ID of the run: every process of the build carries it, so a restart can find leftovers. */
  alloc: z.string().optional(),
  /** The build has a payload (secrets), held in petrel's memory only, never on disk. */
  secret: z.boolean().optional(),
});
export type BuildRecord = z.infer<typeof BuildRecord>;

/** Build records and their files on disk; every write is a temp file renamed into place. */
export interface BuildStore {
  readonly root: string;
  dirOf(id: string): string;
  save(record: BuildRecord): Promise<void>;
  loadAll(): Promise<{ records: BuildRecord[]; broken: string[] }>;
  remove(id: string): Promise<void>;
}

/** IDs contain `/`; a directory name must not. */
export function encodeId(id: string): string {
  return encodeURIComponent(id);
}

export function createBuildStore(dataDir: string): BuildStore {
  const root = join(dataDir, "builds");
  const dirOf = (id: string) => join(root, encodeId(id));
  return {
    root,
    dirOf,
    async save(record) {
      const dir = dirOf(record.id);
      await mkdir(dir, { recursive: true });
      const tmp = join(dir, `.build.json.${randomBytes(6).toString("hex")}.tmp`);
      await writeFile(tmp, `${JSON.stringify(record, null, 2)}\n`);
      await rename(tmp, join(dir, "build.json"));
    },
    async loadAll() {
      await mkdir(root, { recursive: true });
      const records: BuildRecord[] = [];
      const broken: string[] = [];
      for (const name of await readdir(root)) {
        let text: string;
        try {
          text = await readFile(join(root, name, "build.json"), "utf8");
        } catch {
          broken.push(name);
          continue;
        }
        try {
          records.push(BuildRecord.parse(JSON.parse(text)));
        } catch {
          broken.push(name);
        }
      }
      return { records, broken };
    },
    async remove(id) {
      await rm(dirOf(id), { recursive: true, force: true });
    },
  };
}
