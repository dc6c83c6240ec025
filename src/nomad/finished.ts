import { isBuildOf } from "../contract/dispatch.js";
import type { NomadClient } from "./client.js";

/**
 * Every dead child of the builders that Nomad still has, listed in pages (`per_page`/`next_token`): the
 * builds that may be final. Whether one really is, the archiver reads.
 */
export function nomadFinishedBuilds(options: {
  nomad: NomadClient;
  builders: () => ReadonlySet<string>;
  pageSize?: number;
}): (signal: AbortSignal) => AsyncIterable<readonly string[]> {
  const perPage = options.pageSize ?? 200;
  return async function* (signal) {
    for (const builder of [...options.builders()]) {
      const own = new Set([builder]);
      let nextToken: string | undefined;
      do {
        const page = await options.nomad.listJobsPage({
          prefix: `${builder}/dispatch-`,
          perPage,
          signal,
          ...(nextToken === undefined ? {} : { nextToken }),
        });
        // The prefix also matches children of a builder whose name extends this one's; ParentID decides.
        yield page.jobs.filter((j) => j.ParentID === builder && j.Status === "dead" && isBuildOf(j.ID, own)).map((j) => j.ID);
        nextToken = page.nextToken;
      } while (nextToken !== undefined);
    }
  };
}
