/**
 * Resolves once `check` holds, looking again on every turn of the event loop's timers; fails with `what` after
 * `ms`. For waiting on something the test can observe (a recorded request, a counter, received bytes) instead
 * of sleeping for a guessed while.
 */
export async function eventually(check: () => boolean, ms = 5000, what = "condition"): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`${what} not met within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
