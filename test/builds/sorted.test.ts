import { describe, expect, it } from "vitest";
import { newestFirst } from "../../src/builds/backend.js";
import { createNewestFirstIndex, type Ranked } from "../../src/builds/sorted.js";

describe("newest-first index", () => {
  it("keeps builds in listing order through adds, bulk loads and deletes, and pages from a cursor", () => {
    const index = createNewestFirstIndex();
    const all: Ranked[] = [];
    let seed = 7;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    for (let i = 0; i < 300; i++) all.push({ time: 1_000 + rand(50), id: `b/dispatch-${rand(1e6)}-${i}` });
    index.addAll(all.slice(0, 200));
    for (const e of all.slice(200)) index.add(e);
    index.add(all[5] as Ranked);
    expect(index.size).toBe(300);
    const removed = all.filter((_, i) => i % 7 === 0);
    for (const e of removed) index.delete(e);
    index.delete({ time: 1, id: "never-there" });
    const expected = all.filter((_, i) => i % 7 !== 0).sort(newestFirst);
    expect([...index.from()]).toEqual(expected);
    const cursor = expected[41] as Ranked;
    expect([...index.from(cursor)]).toEqual(expected.slice(42));
    // A walk in progress keeps its snapshot.
    const walk = index.from()[Symbol.iterator]();
    const firstTwo = [walk.next().value, walk.next().value];
    index.add({ time: 999_999, id: "newest" });
    index.delete(expected[2] as Ranked);
    expect([...firstTwo, ...{ [Symbol.iterator]: () => walk }]).toEqual(expected);
    expect([...index.from()][0]).toEqual({ time: 999_999, id: "newest" });
  });
});
