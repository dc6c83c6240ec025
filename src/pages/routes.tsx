import { randomBytes } from "node:crypto";
import type { Context, Next } from "hono";
import { Hono } from "hono";
import { deleteCookie, getCookie, setCookie } from "hono/cookie";
import { raw } from "hono/html";
import type { Child } from "hono/jsx";
import { safeEqual } from "../auth.js";
import type { Build, BuildFilter, BuildState } from "../builds/backend.js";
import { BUILD_STATES, isTerminal } from "../builds/backend.js";
import { entryOfBuild } from "../builds/statuses.js";
import { AppError, errorMessage } from "../errors.js";
import type { Access } from "../routes/access.js";
import type { BuildActions } from "../routes/actions.js";
import { formatCursor, parseCursor } from "../routes/builds.js";
import type { AppDeps } from "../routes/deps.js";
import { createAssets } from "./assets.js";
import { createLogHtml } from "./log-html.js";
import { prefersHtml } from "./negotiate.js";
import { LOGIN_CSRF_COOKIE, SESSION_COOKIE, type Sessions } from "./session.js";
import type { Viewer } from "./views.js";
import { BuildsTable, BuildView, buildHref, Filters, LoginForm, Notice, Shell, STREAM_MARK, State } from "./views.js";

const LIST_LIMIT = 50;
/** Builds a repository page groups by branch and pull request. */
const REPO_LIMIT = 300;
const CSP = [
  "default-src 'none'",
  "style-src 'self' 'unsafe-inline'",
  "script-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "form-action 'self'",
  "frame-ancestors 'none'",
  "base-uri 'none'",
].join("; ");

/**
 * The web pages (SPEC §9): the same URLs as the API for a request whose Accept prefers HTML, plus `/`,
 * `/repos/...`, `/login`, `/logout` and the forms that cancel and re-run. They read with the API's rule
 * (`access`) and change builds with the API's code (`actions`), a session cookie and a CSRF token standing in
 * for the bearer token.
 */
export function createPagesRoute(deps: AppDeps, access: Access, actions: BuildActions, sessions: Sessions): Hono {
  const app = new Hono();
  const assets = createAssets();
  const links = { css: assets.css.href, js: assets.js.href };
  const secure = deps.publicUrl.startsWith("https:");

  const sessionOf = (c: Context): string | undefined => {
    const cookie = getCookie(c, SESSION_COOKIE);
    return sessions.valid(cookie) ? cookie : undefined;
  };
  const viewerOf = (c: Context): Viewer => {
    const session = sessionOf(c);
    const path = new URL(c.req.url).pathname + new URL(c.req.url).search;
    return { loginEnabled: sessions.enabled, path, ...(session === undefined ? {} : { csrf: sessions.csrfFor(session) }) };
  };

  const page = (c: Context, title: string, body: Child, status = 200) => {
    c.header("Content-Security-Policy", CSP);
    c.header("Cache-Control", "no-store");
    c.header("X-Content-Type-Options", "nosniff");
    return c.html(
      `<!doctype html>${(
        (
          <Shell title={title} assets={links} viewer={viewerOf(c)}>
            {body}
          </Shell>
        )
      ).toString()}`,
      status as 200,
    );
  };

  const errorPage = (c: Context, err: unknown) => {
    if (!(err instanceof AppError)) throw err;
    const login = err.status === 401 && sessions.enabled && sessionOf(c) === undefined;
    return page(
      c,
      err.status === 404 ? "Not found" : "Error",
      <>
        <h1>{err.status === 401 ? "Not allowed" : err.status === 404 ? "Not found" : "Error"}</h1>
        <Notice>
          {err.status === 401 ? "This page needs the admin token." : err.message}{" "}
          {login ? <a href={`/login?next=${encodeURIComponent(new URL(c.req.url).pathname)}`}>Log in</a> : null}
        </Notice>
      </>,
      err.status,
    );
  };

  /** Runs a page handler for requests that prefer HTML; anything else goes on to the API. */
  const html =
    (handler: (c: Context) => Promise<Response> | Response) =>
    async (c: Context, next: Next): Promise<Response | undefined> => {
      if (!prefersHtml(c.req.header("accept"))) {
        await next();
        return undefined;
      }
      try {
        return await handler(c);
      } catch (err) {
        return errorPage(c, err);
      }
    };

  for (const a of [assets.css, assets.js]) {
    app.get(a.href.split("?")[0] as string, (c) => {
      const versioned = c.req.query("v") === a.href.split("v=")[1];
      c.header("ETag", a.etag);
      c.header("Cache-Control", versioned ? "public, max-age=31536000, immutable" : "public, max-age=0, must-revalidate");
      c.header("X-Content-Type-Options", "nosniff");
      const match = c.req.header("if-none-match");
      if (match?.split(",").some((t) => t.trim().replace(/^W\//, "") === a.etag)) return c.body(null, 304);
      c.header("Content-Type", a.type);
      return c.body(a.body);
    });
  }

  const listing = async (c: Context) => {
    const repo = c.req.query("repo") || undefined;
    const ref = c.req.query("ref") || undefined;
    const state = c.req.query("state") || undefined;
    const cursor = c.req.query("cursor") || undefined;
    if (state !== undefined && !(BUILD_STATES as readonly string[]).includes(state)) {
      throw new AppError("bad_request", `state must be one of ${BUILD_STATES.join(", ")}`);
    }
    const admin = access.reader(c);
    const filter: BuildFilter = { limit: LIST_LIMIT };
    if (repo !== undefined) filter.repo = repo;
    if (ref !== undefined) filter.ref = ref;
    if (state !== undefined) filter.state = state as BuildState;
    if (cursor !== undefined) filter.after = parseCursor(cursor);
    if (!admin) filter.visible = access.publicBuild;
    const result = await deps.reader.listBuilds(filter, c.req.raw.signal);
    const more = new URLSearchParams();
    for (const [k, v] of Object.entries({ repo, ref, state })) if (v !== undefined) more.set(k, v);
    if (result.next !== undefined) more.set("cursor", formatCursor(result.next));
    // As the API: no hidden count for an anonymous listing filtered by repository or ref.
    const hidden = admin || (repo === undefined && ref === undefined) ? result.hidden : 0;
    return page(
      c,
      "Builds",
      <>
        <h1>Builds</h1>
        <Filters {...{ repo, ref, state }} />
        {result.builds.length === 0 ? <Notice>No builds to show.</Notice> : <BuildsTable builds={result.builds} />}
        {hidden > 0 ? <p>{`${hidden} build${hidden === 1 ? "" : "s"} of private repositories not shown: log in to see them.`}</p> : null}
        {result.next === undefined ? null : (
          <p>
            <a href={`/?${more}`} rel="next">
              Older builds
            </a>
          </p>
        )}
      </>,
    );
  };

  app.get("/", async (c) => {
    try {
      return await listing(c);
    } catch (err) {
      return errorPage(c, err);
    }
  });
  app.get("/builds", html(listing));

  app.get("/repos/:host/:owner/:name", async (c) => {
    const { host, owner, name } = c.req.param();
    const key = `${host}/${owner}/${name}`.toLowerCase();
    const admin = access.reader(c);
    const result = await deps.reader.listBuilds(
      {
        repo: `${owner}/${name}`,
        limit: REPO_LIMIT,
        visible: async (b) => (await entryOfBuild(deps.registry, b))?.key === key && (admin || (await access.publicBuild(b))),
      },
      c.req.raw.signal,
    );
    const groups = new Map<string, Build[]>();
    for (const b of result.builds) {
      const label = b.pr
        ? `Pull request #${b.pr} (${b.ref})`
        : b.tag !== undefined || b.event === "tag"
          ? `Tag ${b.ref}`
          : `Branch ${b.ref}`;
      groups.set(label, [...(groups.get(label) ?? []), b]);
    }
    return page(
      c,
      `${owner}/${name}`,
      <>
        <h1>
          {owner}/{name} <small class="mono">{host}</small>
        </h1>
        {groups.size === 0 ? (
          <Notice>No builds you may read.</Notice>
        ) : (
          [...groups].map(([label, builds]) => (
            <section class="group" aria-label={label}>
              <h3>
                <State state={(builds[0] as Build).state} /> {label}
              </h3>
              <BuildsTable builds={builds.slice(0, 5)} showRepo={false} />
            </section>
          ))
        )}
      </>,
    );
  });

  const buildRoute = html(async (c) => buildPage(c, await access.ourBuild(c, decode(c.req.path.slice("/builds/".length)))));
  app.get("/builds/*", async (c, next) => {
    // The raw log stays text whatever the Accept: the page links to it.
    if (c.req.path.endsWith("/logs")) return next();
    return buildRoute(c, next);
  });

  const buildPage = (c: Context, build: Build): Response => {
    const live = !isTerminal(build.state);
    const logsUrl = `${buildHref(build.id)}/logs`;
    const viewer = viewerOf(c);
    const shell = `<!doctype html>${(
      (
        <Shell title={`${build.repo} ${build.ref}`} assets={links} viewer={viewer} script={true}>
          <BuildView build={build} viewer={viewer} logsUrl={logsUrl} live={live} />
          {raw(STREAM_MARK)}
        </Shell>
      )
    ).toString()}`;
    const [head = "", tail = ""] = shell.split(STREAM_MARK);
    const encoder = new TextEncoder();
    const abort = new AbortController();
    const onAbort = () => abort.abort();
    c.req.raw.signal.addEventListener("abort", onAbort, { once: true });
    const log = createLogHtml();
    const open = `<div class="log" id="log" aria-labelledby="log-title" data-live="${live}" data-src="${logsUrl}?type=all">`;
    let iterator: AsyncIterator<Uint8Array> | undefined;
    let sentHead = false;
    const finish = (controller: ReadableStreamDefaultController<Uint8Array>, note?: string) => {
      c.req.raw.signal.removeEventListener("abort", onAbort);
      const closing =
        log.end(!live) +
        `<div id="log-end" hidden data-offset="${log.offset}" data-lines="${log.lines}"></div></div>` +
        (note === undefined ? "" : `<p class="notice">${escapeHtml(note)}</p>`);
      controller.enqueue(encoder.encode(closing + tail));
      controller.close();
    };
    const stream = new ReadableStream<Uint8Array>(
      {
        async pull(controller) {
          if (!sentHead) {
            sentHead = true;
            controller.enqueue(encoder.encode(head + open));
            // A queued build has no log yet (reading it would wait for the build to start): the script follows it.
            if (build.state === "queued") return finish(controller);
            iterator = deps.reader.logs(build.id, { type: "all", follow: false, offset: 0, signal: abort.signal })[Symbol.asyncIterator]();
            return;
          }
          try {
            for (;;) {
              const next = await (iterator as AsyncIterator<Uint8Array>).next();
              if (next.done) return finish(controller);
              const html = log.push(next.value);
              if (html !== "") return controller.enqueue(encoder.encode(html));
            }
          } catch (err) {
            if (abort.signal.aborted) return controller.close();
            finish(controller, `The log could not be read: ${errorMessage(err)}`);
          }
        },
        async cancel() {
          abort.abort();
          await iterator?.return?.();
        },
      },
      // Render ahead while the browser parses (a few MiB of HTML at most), rather than one chunk at a time.
      { highWaterMark: 16 },
    );
    return new Response(stream, {
      headers: {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Security-Policy": CSP,
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
      },
    });
  };

  // The pages' forms. Each needs the session cookie AND its CSRF token; a request another site makes the
  // browser send is refused before either is looked at.
  const formGuard = async (c: Context): Promise<Record<string, string>> => {
    if (c.req.header("sec-fetch-site") === "cross-site") throw new AppError("forbidden", "cross-site form posts are refused");
    const form = await formOf(c);
    const session = sessionOf(c);
    if (session === undefined) throw new AppError("unauthorized", "log in first: this form needs the admin's session");
    if (!sessions.csrfValid(session, form.csrf))
      throw new AppError("forbidden", "the form's CSRF token is missing or wrong; reload the page");
    access.grantForm(c);
    return form;
  };

  app.post("/builds/*", async (c, next) => {
    const m = /^\/builds\/(.+)\/actions\/(cancel|rerun)$/.exec(c.req.path);
    if (m === null) return next();
    try {
      await formGuard(c);
      const id = decode(m[1] as string);
      if (m[2] === "cancel") {
        await actions.cancel(c, id);
        return c.redirect(buildHref(id), 303);
      }
      const { plan } = await actions.rerun(c, id);
      return c.redirect(buildHref(plan.id), 303);
    } catch (err) {
      return errorPage(c, err);
    }
  });

  const loginPage = (c: Context, next: string, failed: boolean) => {
    if (!sessions.enabled) throw new AppError("forbidden", "logging in is disabled: PETREL_ADMIN_TOKEN is not set");
    const csrf = randomBytes(24).toString("base64url");
    setCookie(c, LOGIN_CSRF_COOKIE, csrf, { path: "/login", httpOnly: true, sameSite: "Strict", secure, maxAge: 3600 });
    return page(c, "Log in", <LoginForm csrf={csrf} next={next} failed={failed} />, failed ? 401 : 200);
  };

  app.get("/login", (c) => {
    try {
      return loginPage(c, safeNext(c.req.query("next")), false);
    } catch (err) {
      return errorPage(c, err);
    }
  });

  app.post("/login", async (c) => {
    try {
      if (c.req.header("sec-fetch-site") === "cross-site") throw new AppError("forbidden", "cross-site form posts are refused");
      const form = await formOf(c);
      const expected = getCookie(c, LOGIN_CSRF_COOKIE);
      if (expected === undefined || form.csrf === undefined || !safeEqual(expected, form.csrf)) {
        throw new AppError("forbidden", "the form's CSRF token is missing or wrong; reload the login page");
      }
      const next = safeNext(form.next);
      if (!sessions.tokenMatches(form.token ?? "")) {
        deps.log.info({ path: "/login" }, "page login refused: wrong admin token");
        return loginPage(c, next, true);
      }
      deleteCookie(c, LOGIN_CSRF_COOKIE, { path: "/login", secure });
      setCookie(c, SESSION_COOKIE, sessions.issue(), {
        path: "/",
        httpOnly: true,
        sameSite: "Strict",
        secure,
        maxAge: sessions.maxAgeSeconds,
      });
      deps.log.info({ path: "/login" }, "page login");
      return c.redirect(next, 303);
    } catch (err) {
      return errorPage(c, err);
    }
  });

  app.get("/logout", (c) => {
    const viewer = viewerOf(c);
    if (viewer.csrf === undefined) return c.redirect("/", 303);
    return page(
      c,
      "Log out",
      <form method="post" action="/logout">
        <input type="hidden" name="csrf" value={viewer.csrf} />
        <button type="submit">Log out</button>
      </form>,
    );
  });

  app.post("/logout", async (c) => {
    try {
      await formGuard(c);
      deleteCookie(c, SESSION_COOKIE, { path: "/", secure });
      return c.redirect("/", 303);
    } catch (err) {
      return errorPage(c, err);
    }
  });

  return app;
}

function decode(raw: string): string {
  try {
    return decodeURIComponent(raw);
  } catch {
    throw new AppError("bad_request", "build id is not valid percent-encoding");
  }
}

/** Only a path of this site: never `//host` or a full URL (an open redirect). */
function safeNext(next: string | undefined): string {
  return next !== undefined && /^\/(?![/\\])/.test(next) ? next : "/";
}

async function formOf(c: Context): Promise<Record<string, string>> {
  const type = c.req.header("content-type") ?? "";
  if (!type.startsWith("application/x-www-form-urlencoded") && !type.startsWith("multipart/form-data")) {
    throw new AppError("unsupported_media_type", "send the page's form");
  }
  const body = await c.req.parseBody();
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(body)) if (typeof v === "string") out[k] = v;
  return out;
}

function escapeHtml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}
