/**
 * The Consul, Nomad and Gitea fakes in a process of their own, seeded like the tests, so a benchmark does not
 * charge their CPU to the code it measures. Prints `{"consul","nomad","gitea"}` URLs as one JSON line, then
 * runs until its standard input closes. Also seeds finished builds on request (see below).
 */
import { createInterface } from "node:readline";
import { MERGED_LOG_PATH } from "../src/nomad/logs.js";
import { startConsulFake } from "../test/fakes/consul.js";
import { startGiteaFake } from "../test/fakes/gitea.js";
import { startNomadFake } from "../test/fakes/nomad.js";
import { GITEA_TOKEN, HOOK_SECRET, seedFakes } from "../test/helpers/cluster.js";

/** The registry key of the status-less repository; its pushes name `acme/quiet`. */
export const QUIET_KEY = "git.example.test/acme/quiet";

const consul = await startConsulFake();
const nomad = await startNomadFake();
const gitea = await startGiteaFake({ token: GITEA_TOKEN });
seedFakes(consul, nomad, gitea.url);
// A second repository without a `gitea` block: the same webhook path with no commit status to send.
consul.set(`petrel/repos/${QUIET_KEY}`, JSON.stringify({ hook: { secret: HOOK_SECRET }, trusted: { senders: ["dana"] } }));
process.stdout.write(`${JSON.stringify({ consul: consul.url, nomad: nomad.url, gitea: gitea.url })}\n`);

// The parent asks, one line at a time: `?` how many non-blocking Consul reads happened; `seed <n> <KiB>` to
// have Nomad run `n` builds to the end, each with a log of that size (the archive benchmark's burst).
const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  const [command, count, kib] = line.trim().split(" ");
  if (command === "seed") {
    void seed(Number(count), Number(kib)).then((ids) => process.stdout.write(`${JSON.stringify({ ids })}\n`));
    return;
  }
  const reads = consul.requests.filter((r) => r.query.index === undefined).length;
  process.stdout.write(`${JSON.stringify({ consulReads: reads })}\n`);
});
lines.on("close", () => {
  void Promise.all([consul.close(), nomad.close(), gitea.close()]).then(() => process.exit(0));
});

let seeded = 0;
async function seed(count: number, kib: number): Promise<string[]> {
  const line = "   compiling src/module.ts [42%] ········ 12.34 kB\n";
  const output = Buffer.from(line.repeat(Math.ceil((kib * 1024) / line.length))).subarray(0, kib * 1024);
  const ids: string[] = [];
  for (let i = 0; i < count; i++) {
    const commit = (seeded++).toString(16).padStart(40, "f");
    const res = await fetch(`${nomad.url}/v1/job/builder/dispatch`, {
      method: "POST",
      body: JSON.stringify({
        Meta: { REPO_URL: "https://git.example.test/acme/widgets.git", COMMIT: commit, BRANCH: "main", FLAVOR: "default" },
      }),
    });
    const id = ((await res.json()) as { DispatchedJobID: string }).DispatchedJobID;
    nomad.placeAlloc(id, { node: "worker-1" });
    nomad.startTask(id);
    nomad.writeLog(id, "stdout", output);
    nomad.writeLog(id, "stderr", "warning: 3 deprecations\n");
    nomad.writeAllocFile(id, MERGED_LOG_PATH, output);
    nomad.finishTask(id, 0);
    ids.push(id);
  }
  return ids;
}
