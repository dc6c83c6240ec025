/**
 * The Consul, Nomad and Gitea fakes in a process of their own, seeded like the tests, so a benchmark does not
 * charge their CPU to the code it measures. Prints `{"consul","nomad","gitea"}` URLs as one JSON line, then
 * runs until its standard input closes.
 */
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

// The parent asks how many non-blocking Consul reads happened by writing a line.
process.stdin.setEncoding("utf8");
process.stdin.on("data", () => {
  const reads = consul.requests.filter((r) => r.query.index === undefined).length;
  process.stdout.write(`${JSON.stringify({ consulReads: reads })}\n`);
});
process.stdin.on("end", () => {
  void Promise.all([consul.close(), nomad.close(), gitea.close()]).then(() => process.exit(0));
});
