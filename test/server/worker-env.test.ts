import assert from "node:assert/strict";
import { availableParallelism } from "node:os";
import { test } from "node:test";
import { workerEnv } from "../../src/server/runner.js";

test("studio workers get every core but one unless ATELIER_NUM_THREADS is set", () => {
  const env = workerEnv({ PATH: "/usr/bin" });
  assert.equal(env.ATELIER_NUM_THREADS, String(Math.max(1, availableParallelism() - 1)));
  assert.equal(env.PATH, "/usr/bin");
  assert.equal(workerEnv({ ATELIER_NUM_THREADS: "3" }).ATELIER_NUM_THREADS, "3");
});
