// The kill soak, short: three SIGKILLs of `atelier train` at seeded random
// moments, each followed by a resume from the newest listed state; every
// listed file loads after each kill and the final weights equal an
// uninterrupted run's. The long run: node dist/test/soak/kill-soak.js --kills 20.
import assert from "node:assert/strict";
import { test } from "node:test";
import { runKillSoak } from "./kill-soak.js";

test("kill soak: 3 kills, each resumed from the newest listed state; no corrupt file; the uninterrupted run's weights", async (t) => {
  const r = await runKillSoak({ kills: 3, seed: 7, steps: 8 });
  t.diagnostic(JSON.stringify(r));
  assert.equal(r.kills, 3);
  assert.deepEqual(r.corrupt, []);
  assert.ok(r.resumes >= 1, "at least one kill came after a state was saved");
  assert.equal(r.identical, true, "final weights equal the uninterrupted run's");
});
