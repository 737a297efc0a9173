// A toy training method, as a plug-in would write one: its own config
// section, one trainable tensor (the UNet's conv_in bias), an extra loss
// term, after-step work and its own file format. Registering it is the one
// line test/train/toy-method.test.ts adds.
import { join } from "node:path";
import { scope, type Tensor } from "../../src/engine/index.js";
import { saveSafetensors } from "../../src/formats/safetensors.js";
import { f } from "../../src/train/config-fields.js";
import { defineMethod } from "../../src/train/methods/index.js";

/** What the toy's hooks saw, for the test to check. */
export const toyLog = { afterSteps: [] as number[] };

export const toy = defineMethod({
  name: "toy",
  doc: "trains the UNet's conv_in bias only, with an L2 pull towards 0",
  schema: {
    toy: f.group(
      { l2: f.number({ min: 0, default: 0.5, doc: "weight of the L2 term on the bias" }) },
      "the toy method's settings",
    ),
  },
  formats: ["toy_safetensors"],
  defaultLearningRate: 1e-2,
  create(c, { model }) {
    model.vae.requiresGrad_(false);
    model.textEncoder.requiresGrad_(false);
    model.unet.requiresGrad_(false).train();
    const bias = model.unet.stateDict().get("conv_in.bias") as Tensor;
    bias.requiresGrad_(true);
    return {
      name: "toy",
      trainsTextEncoder: false,
      groups: () => [{ name: "toy", params: [bias], lr: c.learning_rate }],
      namedTrainable: () => new Map([["conv_in.bias", bias]]),
      extraLoss: () => ({ toy_l2: bias.pow(2).sum().mul(c.toy.l2) }),
      afterStep: (step) => {
        toyLog.afterSteps.push(step);
      },
      save(r) {
        const path = join(r.outputDir, `toy${r.tag}.safetensors`);
        scope(() => saveSafetensors(path, new Map([["bias", bias.detach()]]), r.metadata));
        return [{ path, kind: "checkpoint", format: "toy_safetensors" }];
      },
      dispose() {
        bias.requiresGrad_(false);
        model.unet.eval();
      },
    };
  },
});
