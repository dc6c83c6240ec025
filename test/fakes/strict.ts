/**
 * Fails the suite that closes a fake which received requests it does not model: such a request got a 501 instead
 * of a plausible answer, and the test that sent it would otherwise pass on behaviour no real server has.
 */
export function assertExpected(name: string, unexpected: string[]): void {
  if (unexpected.length > 0) throw new Error(`${name} fake: requests it does not model: ${unexpected.join(", ")}`);
}
