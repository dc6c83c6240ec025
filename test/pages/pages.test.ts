import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { prefersHtml } from "../../src/pages/negotiate.js";
import { ADMIN_TOKEN, until } from "../cli/harness.js";
import { type PagesPetrel, startPagesPetrel } from "./harness.js";

// The pages over HTTP (issue 12): content negotiation on the API's URLs, the assets' validators, the login
// cookie's flags, and the attack on the forms: a request carrying the session cookie but not its CSRF token.

const BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8";

describe("prefersHtml", () => {
  it.each([
    [BROWSER_ACCEPT, true],
    ["text/html", true],
    ["*/*", false],
    ["application/json", false],
    ["text/event-stream", false],
    ["application/json, text/html;q=0.5", false],
    ["text/html;q=0, */*", false],
    [undefined, false],
  ])("Accept %s → %s", (accept, expected) => {
    expect(prefersHtml(accept)).toBe(expected);
  });
});

describe("pages over HTTP", () => {
  let petrel: PagesPetrel;
  let done: string;
  let secret: string;
  beforeAll(async () => {
    petrel = await startPagesPetrel("https://ci.example.test");
    done = await petrel.dispatch("colors");
    secret = await petrel.dispatch("colors", "acme/secret");
    await petrel.final(done);
    await petrel.final(secret);
  }, 60_000);
  afterAll(async () => {
    await petrel?.close();
  });

  const path = (id: string) => `/builds/${encodeURIComponent(id)}`;

  async function login(): Promise<{ cookie: string; csrf: string; setCookie: string }> {
    const form = await fetch(`${petrel.url}/login`, { headers: { accept: BROWSER_ACCEPT } });
    const loginCsrf = /name="csrf" value="([^"]+)"/.exec(await form.text())?.[1] ?? "";
    const csrfCookie = (form.headers.get("set-cookie") ?? "").split(";")[0] ?? "";
    const res = await fetch(`${petrel.url}/login`, {
      method: "POST",
      redirect: "manual",
      headers: { "content-type": "application/x-www-form-urlencoded", cookie: csrfCookie },
      body: new URLSearchParams({ token: ADMIN_TOKEN, csrf: loginCsrf, next: "/" }),
    });
    expect(res.status).toBe(303);
    const setCookie = res.headers.getSetCookie().find((c) => c.startsWith("petrel_session=")) ?? "";
    const cookie = setCookie.split(";")[0] ?? "";
    const page = await fetch(`${petrel.url}/`, { headers: { accept: BROWSER_ACCEPT, cookie } });
    const csrf = /name="csrf" value="([^"]+)"/.exec(await page.text())?.[1] ?? "";
    expect(csrf).not.toBe("");
    return { cookie, csrf, setCookie };
  }

  it("answers the same URL with a page for a browser and with the API's JSON and text otherwise", async () => {
    const page = await fetch(`${petrel.url}${path(done)}`, { headers: { accept: BROWSER_ACCEPT } });
    expect(page.headers.get("content-type")).toMatch(/^text\/html/);
    expect(page.headers.get("content-security-policy")).toContain("script-src 'self'");
    const html = await page.text();
    expect(html).toContain('<span class="ansi-red-fg">red error</span>');
    expect(html).toContain("downloading 100%</div>");
    expect(html).not.toContain("downloading 10%");
    expect(html).toContain("plain &lt;b&gt;not bold&lt;/b&gt; &amp; done");

    const json = await fetch(`${petrel.url}${path(done)}`);
    expect(json.headers.get("content-type")).toMatch(/^application\/json/);
    expect(((await json.json()) as { state: string }).state).toBe("success");
    const raw = await fetch(`${petrel.url}${path(done)}/logs?type=all`, { headers: { accept: BROWSER_ACCEPT } });
    expect(raw.headers.get("content-type")).toMatch(/^text\/plain/);
    expect(await raw.text()).toContain("downloading 10%\rdownloading 55%");
    const list = await fetch(`${petrel.url}/builds`, { headers: { accept: "*/*" } });
    expect(list.headers.get("content-type")).toMatch(/^application\/json/);
  });

  it("serves the stylesheet and the script with cache headers and an ETag, and 304 for a matching If-None-Match", async () => {
    const page = await (await fetch(`${petrel.url}/`, { headers: { accept: BROWSER_ACCEPT } })).text();
    const css = /href="(\/assets\/petrel\.css\?v=[^"]+)"/.exec(page)?.[1];
    expect(css).toBeDefined();
    const res = await fetch(`${petrel.url}${css}`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toMatch(/^text\/css/);
    expect(res.headers.get("cache-control")).toContain("immutable");
    const etag = res.headers.get("etag") ?? "";
    expect(etag).toMatch(/^"[\w-]+"$/);
    const again = await fetch(`${petrel.url}${css}`, { headers: { "if-none-match": etag } });
    expect(again.status).toBe(304);
    const js = await fetch(`${petrel.url}/assets/petrel.js`);
    expect(js.headers.get("content-type")).toMatch(/^text\/javascript/);
    expect(js.headers.get("cache-control")).toContain("must-revalidate");
    expect(await js.text()).toContain("class AnsiUp");
  });

  it("hides a private repository's builds from anonymous page viewers, as the API does", async () => {
    const page = await fetch(`${petrel.url}${path(secret)}`, { headers: { accept: BROWSER_ACCEPT } });
    expect(page.status).toBe(401);
    expect(await page.text()).not.toContain("red error");
    const list = await (await fetch(`${petrel.url}/`, { headers: { accept: BROWSER_ACCEPT } })).text();
    expect(list).toContain(encodeURIComponent(done));
    expect(list).not.toContain(encodeURIComponent(secret));
    const repo = await (await fetch(`${petrel.url}/repos/git.example.test/acme/secret`, { headers: { accept: BROWSER_ACCEPT } })).text();
    expect(repo).toContain("No builds you may read");
  });

  it("keeps the admin session in an HttpOnly, SameSite=Strict, Secure cookie that reads private builds (GET only)", async () => {
    const { cookie, setCookie } = await login();
    expect(setCookie).toMatch(/HttpOnly/i);
    expect(setCookie).toMatch(/SameSite=Strict/i);
    expect(setCookie).toMatch(/Secure/i);
    expect(setCookie).not.toContain(ADMIN_TOKEN);
    const page = await fetch(`${petrel.url}${path(secret)}`, { headers: { accept: BROWSER_ACCEPT, cookie } });
    expect(page.status).toBe(200);
    expect(await page.text()).toContain("red error");
    const json = await fetch(`${petrel.url}${path(secret)}`, { headers: { cookie } });
    expect(json.status).toBe(200);
  });

  it("refuses a wrong token and a login form without its CSRF token", async () => {
    const form = await fetch(`${petrel.url}/login`, { headers: { accept: BROWSER_ACCEPT } });
    const csrf = /name="csrf" value="([^"]+)"/.exec(await form.text())?.[1] ?? "";
    const csrfCookie = (form.headers.get("set-cookie") ?? "").split(";")[0] ?? "";
    const post = (body: Record<string, string>, cookie = csrfCookie) =>
      fetch(`${petrel.url}/login`, {
        method: "POST",
        redirect: "manual",
        headers: { "content-type": "application/x-www-form-urlencoded", cookie },
        body: new URLSearchParams(body),
      });
    const wrong = await post({ token: "not-the-admin-token-at-all", csrf });
    expect(wrong.status).toBe(401);
    expect(wrong.headers.getSetCookie().some((c) => c.startsWith("petrel_session="))).toBe(false);
    const noCsrf = await post({ token: ADMIN_TOKEN }, "");
    expect(noCsrf.status).toBe(403);
    expect(noCsrf.headers.getSetCookie().some((c) => c.startsWith("petrel_session="))).toBe(false);
  });

  it("refuses the attack: a cross-site cancel with the session cookie but without the CSRF token leaves the build running", async () => {
    const { cookie, csrf } = await login();
    const running = await petrel.dispatch("sleep");
    await until(async () => (await petrel.backend.getBuild(running))?.state === "running");
    const form = (body: Record<string, string>, extra: Record<string, string> = {}) =>
      fetch(`${petrel.url}${path(running)}/actions/cancel`, {
        method: "POST",
        redirect: "manual",
        headers: { "content-type": "application/x-www-form-urlencoded", cookie, origin: "https://evil.example", ...extra },
        body: new URLSearchParams(body),
      });
    // What a forged form on another site would send: the cookie (if the browser sent it at all), no token.
    expect((await form({})).status).toBe(403);
    expect((await form({ csrf: "guessed-csrf-token" })).status).toBe(403);
    expect((await form({ csrf }, { "sec-fetch-site": "cross-site" })).status).toBe(403);
    // The JSON API never takes the cookie for a change: only the bearer token.
    const del = await fetch(`${petrel.url}${path(running)}`, { method: "DELETE", headers: { cookie } });
    expect(del.status).toBe(401);
    const rerun = await fetch(`${petrel.url}${path(running)}/rerun`, { method: "POST", headers: { cookie } });
    expect(rerun.status).toBe(401);
    expect((await petrel.backend.getBuild(running))?.state).toBe("running");
    // The page's own form, with its token, cancels.
    const ok = await form({ csrf }, { origin: petrel.url, "sec-fetch-site": "same-origin" });
    expect(ok.status).toBe(303);
    expect((await petrel.final(running)).state).toBe("cancelled");
  });
});
