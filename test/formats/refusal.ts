// The check every malformed-safetensors test makes: opening the file throws
// a SafetensorsError whose message names the file and matches `pattern`.
import assert from "node:assert/strict";
import { openSafetensors, SafetensorsError } from "../../src/formats/safetensors.js";

export function assertRefused(path: string, pattern: RegExp): void {
  assert.throws(
    () => openSafetensors(path).close(),
    (e: Error) => {
      assert.ok(e instanceof SafetensorsError, `${e.name}: ${e.message}`);
      assert.ok(e.message.startsWith(`${path}: `), `message should name the file: ${e.message}`);
      assert.match(e.message, pattern);
      return true;
    },
  );
}
