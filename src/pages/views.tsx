import type { Child } from "hono/jsx";
import type { Build, BuildState } from "../builds/backend.js";
import { BUILD_STATES, isTerminal } from "../builds/backend.js";

/** Who is looking: whether they hold a page session (then forms carry its CSRF token). */
export interface Viewer {
  /** The CSRF token of the viewer's session; absent for anonymous viewers. */
  csrf?: string;
  /** Whether logging in is possible at all (an admin token is set). */
  loginEnabled: boolean;
  /** Where the viewer is, to come back after logging in. */
  path: string;
}

/** Links the pages load, versioned by content. */
export interface AssetLinks {
  css: string;
  js: string;
}

/** A placeholder `Shell` leaves where a streamed page writes its log. */
export const STREAM_MARK = "<!--petrel:stream-->";

export function Shell(props: { title: string; assets: AssetLinks; viewer: Viewer; children?: Child; script?: boolean }) {
  const { viewer } = props;
  return (
    <html lang="en">
      <head>
        <meta charset="utf-8" />
        <meta name="viewport" content="width=device-width, initial-scale=1" />
        <meta name="referrer" content="same-origin" />
        <title>{props.title} · petrel</title>
        <link rel="stylesheet" href={props.assets.css} />
        {props.script ? <script src={props.assets.js} defer /> : null}
      </head>
      <body>
        <header class="top">
          <a class="brand" href="/">
            petrel
          </a>
          <nav aria-label="Site">
            <a href="/">Builds</a>
            {viewer.csrf !== undefined ? (
              <form method="post" action="/logout">
                <input type="hidden" name="csrf" value={viewer.csrf} />
                <button type="submit">Log out</button>
              </form>
            ) : viewer.loginEnabled ? (
              <a href={`/login?next=${encodeURIComponent(viewer.path)}`}>Log in</a>
            ) : null}
          </nav>
        </header>
        <main>{props.children}</main>
      </body>
    </html>
  );
}

/** The forge's page of a commit, when the clone URL says where the forge is. */
export function commitUrl(build: Pick<Build, "repoUrl" | "commit">): string | undefined {
  const url = build.repoUrl.replace(/\.git$/, "");
  let web: string | undefined;
  if (/^https?:\/\//.test(url)) web = url.replace(/\/\/[^/@]*@/, "//");
  else {
    const scp = /^(?:ssh:\/\/)?[^@/]+@([^:/]+)(?::\d+)?[:/](.+)$/.exec(url);
    if (scp) web = `https://${scp[1]}/${scp[2]}`;
  }
  return web === undefined || !/^[0-9a-f]{7,64}$/i.test(build.commit) ? undefined : `${web}/commit/${build.commit}`;
}

export function buildHref(id: string): string {
  return `/builds/${encodeURIComponent(id)}`;
}

export function durationOf(build: Pick<Build, "startedAt" | "finishedAt">, now = Date.now()): string {
  if (build.startedAt === undefined) return "";
  const end = build.finishedAt === undefined ? now : Date.parse(build.finishedAt);
  const s = Math.max(0, Math.round((end - Date.parse(build.startedAt)) / 1000));
  return s < 60 ? `${s} s` : `${Math.floor(s / 60)} min ${s % 60} s`;
}

function Time(props: { iso: string | undefined; field?: string }) {
  if (props.iso === undefined) return <span data-f={props.field}>–</span>;
  return (
    <time datetime={props.iso} data-f={props.field}>
      {props.iso.replace("T", " ").replace(/\.\d+Z$|Z$/, " UTC")}
    </time>
  );
}

export function State(props: { state: BuildState; id?: string }) {
  return (
    <span class={`state s-${props.state}`} id={props.id}>
      {props.state}
    </span>
  );
}

function Commit(props: { build: Build }) {
  const short = props.build.commit.slice(0, 10);
  const url = commitUrl(props.build);
  return url === undefined ? <code>{short}</code> : <a href={url}>{<code>{short}</code>}</a>;
}

function refLabel(build: Build): string {
  if (build.pr) return `PR #${build.pr} (${build.ref})`;
  if (build.tag !== undefined || build.event === "tag") return `tag ${build.tag ?? build.ref}`;
  return build.ref;
}

export function BuildsTable(props: { builds: Build[]; showRepo?: boolean }) {
  return (
    <table class="builds">
      <thead>
        <tr>
          <th>State</th>
          {props.showRepo === false ? null : <th>Repository</th>}
          <th>Ref</th>
          <th>Commit</th>
          <th class="wide">Flavor</th>
          <th class="wide">Started</th>
          <th>Duration</th>
        </tr>
      </thead>
      <tbody>
        {props.builds.map((b) => (
          <tr>
            <td>
              <a href={buildHref(b.id)} aria-label={`build ${b.id}: ${b.state}`}>
                <State state={b.state} />
              </a>
            </td>
            {props.showRepo === false ? null : (
              <td>
                <a href={`/?repo=${encodeURIComponent(b.repo)}`}>{b.repo}</a>
              </td>
            )}
            <td>{refLabel(b)}</td>
            <td>
              <Commit build={b} />
            </td>
            <td class="wide">{b.flavor}</td>
            <td class="wide">
              <Time iso={b.startedAt ?? b.createdAt} />
            </td>
            <td>{durationOf(b)}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

export function Filters(props: { repo?: string | undefined; ref?: string | undefined; state?: string | undefined }) {
  return (
    <form class="filters" method="get" action="/" aria-label="Filter builds">
      <label>
        Repository
        <input name="repo" value={props.repo ?? ""} placeholder="owner/name" />
      </label>
      <label>
        Ref
        <input name="ref" value={props.ref ?? ""} placeholder="main" />
      </label>
      <label>
        State
        <select name="state">
          <option value="">any</option>
          {BUILD_STATES.map((s) => (
            <option value={s} selected={props.state === s}>
              {s}
            </option>
          ))}
        </select>
      </label>
      <button type="submit">Filter</button>
    </form>
  );
}

/** The build page above its log; the log itself is streamed after STREAM_MARK. */
export function BuildView(props: { build: Build; viewer: Viewer; logsUrl: string; live: boolean }) {
  const { build, viewer } = props;
  const [host] = [/^(?:https?:\/\/|ssh:\/\/)?(?:[^@/]+@)?([^:/]+)/.exec(build.repoUrl)?.[1]];
  return (
    <>
      <h1>
        {build.repo} · {refLabel(build)} <State state={build.state} id="b-state" />
      </h1>
      <dl class="facts">
        <dt>Repository</dt>
        <dd>{host ? <a href={`/repos/${host}/${build.repo}`}>{build.repo}</a> : build.repo}</dd>
        <dt>Commit</dt>
        <dd>
          <Commit build={build} />
        </dd>
        <dt>Ref</dt>
        <dd>{refLabel(build)}</dd>
        <dt>Event</dt>
        <dd>{build.event}</dd>
        <dt>Flavor</dt>
        <dd>{build.flavor}</dd>
        <dt>Trust</dt>
        <dd>{build.trusted ? "trusted (secrets given)" : "untrusted (no secrets)"}</dd>
        <dt>Node</dt>
        <dd data-f="node">{build.node ?? "–"}</dd>
        <dt>Nomad job</dt>
        <dd>
          <code>{build.id}</code>
        </dd>
        <dt>Allocation</dt>
        <dd>
          <code data-f="allocId">{build.allocId ?? "–"}</code>
        </dd>
        <dt>Created</dt>
        <dd>
          <Time iso={build.createdAt} />
        </dd>
        <dt>Started</dt>
        <dd>
          <Time iso={build.startedAt} field="startedAt" />
        </dd>
        <dt>Finished</dt>
        <dd>
          <Time iso={build.finishedAt} field="finishedAt" />
        </dd>
        <dt>Duration</dt>
        <dd data-f="duration">{durationOf(build) || "–"}</dd>
        <dt>Result</dt>
        <dd data-f="reason">{build.reason ?? (build.exitCode === undefined ? "–" : `exit ${build.exitCode}`)}</dd>
      </dl>
      {viewer.csrf === undefined ? null : (
        <div class="actions">
          {isTerminal(build.state) ? null : (
            <form method="post" action={`${buildHref(build.id)}/actions/cancel`} id="cancel-form">
              <input type="hidden" name="csrf" value={viewer.csrf} />
              <button type="submit" class="danger">
                Cancel build
              </button>
            </form>
          )}
          <form method="post" action={`${buildHref(build.id)}/actions/rerun`} id="rerun-form">
            <input type="hidden" name="csrf" value={viewer.csrf} />
            <button type="submit">Re-run build</button>
          </form>
        </div>
      )}
      <h2 id="log-title">Log</h2>
      <div class="toolbar">
        <a href={`${props.logsUrl}?type=all&follow=false`}>Raw log</a>
        <a href={`${props.logsUrl}?type=stdout&follow=false`}>stdout</a>
        <a href={`${props.logsUrl}?type=stderr&follow=false`}>stderr</a>
        {props.live ? (
          <button type="button" id="follow" aria-pressed="true" hidden>
            Stop following
          </button>
        ) : null}
      </div>
    </>
  );
}

export function Notice(props: { children?: Child }) {
  return <p class="notice">{props.children}</p>;
}

export function LoginForm(props: { csrf: string; next: string; failed: boolean }) {
  return (
    <>
      <h1>Log in</h1>
      {props.failed ? <Notice>That is not the admin token.</Notice> : null}
      <form method="post" action="/login" class="filters">
        <input type="hidden" name="csrf" value={props.csrf} />
        <input type="hidden" name="next" value={props.next} />
        <label>
          Admin token (PETREL_ADMIN_TOKEN)
          <input type="password" name="token" autocomplete="current-password" required />
        </label>
        <button type="submit">Log in</button>
      </form>
    </>
  );
}
