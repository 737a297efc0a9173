// The child side of startTrainerProcess (remote.ts): loads the trainer (and
// with it the addon), says "ready", runs createTrainer on the config the
// parent sends, forwards every event and the commands, then sends the result
// or the error and exits. When the parent disconnects (it died), the run is
// stopped after its current step, saving a resumable state, and the child
// exits: no orphan run is left behind and no work is lost.
import type { FromTrainerProcess, ToTrainerProcess } from "./remote.js";
import { createTrainer, type Trainer } from "./trainer.js";

const send = (m: FromTrainerProcess, done?: () => void): void => {
  if (!process.connected) {
    done?.();
    return;
  }
  process.send!(m, undefined, undefined, () => done?.());
};

if (!process.send) {
  console.error("atelier: remote-child.js runs only as startTrainerProcess's child (it needs an IPC channel)");
  process.exit(2);
}

let trainer: Trainer | null = null;

process.on("disconnect", () => {
  if (trainer)
    trainer.stop(); // the run ends after this step with a state, then the child exits
  else process.exit(0);
});

process.on("message", (m: ToTrainerProcess) => {
  if (m.type === "command") {
    if (m.command === "stop") trainer?.stop();
    else if (m.command === "save") trainer?.saveNow();
    else trainer?.sampleNow();
    return;
  }
  if (trainer) return; // one run per process
  const t = createTrainer(m.config, { resume: m.resume });
  trainer = t;
  t.on((event) => send({ type: "event", event }));
  t.run().then(
    (result) => send({ type: "result", result }, () => process.exit(0)),
    (e: unknown) => {
      const err = e instanceof Error ? e : new Error(String(e));
      const code = (err as { code?: unknown }).code;
      send(
        {
          type: "error",
          message: err.message,
          name: err.name,
          stack: err.stack,
          code: typeof code === "string" ? code : undefined,
        },
        () => process.exit(1),
      );
    },
  );
});

send({ type: "ready" });
