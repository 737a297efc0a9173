// The stage-2 lab measurement: the Dreambooth subject's dot detail at 256²
// (src/shapes/detail.ts) for 64² pictures made 256² three ways — a bilinear
// ×4 resize (stage 1 alone), a ×4 upscaler (the shapes base upscaler, or a
// stage-2 fine-tune of it), and the native 256² render as the ceiling. Same
// scenes and seeds for every upscaler.
import { noGrad, scope, tensor } from "../engine/index.js";
import { upscale } from "../infer/upscale.js";
import { disposeUpscaler, loadUpscaler } from "../models/upscaler/index.js";
import { readDotDetail } from "../shapes/detail.js";
import { caption, generateSubject, type Image, renderScene, type Scene } from "../shapes/world.js";

export interface DetailRow {
  name: string;
  /** Mean crispness over the scenes. */
  crispness: number;
}

/** Bilinear ×4 (half-pixel centres, as torch interpolate align_corners=False). */
export function resize4(img: Image): Image {
  const [w, h] = [img.width * 4, img.height * 4];
  const data = new Uint8Array(w * h * 3);
  const at = (x: number, y: number, c: number) =>
    img.data[(Math.min(img.height - 1, Math.max(0, y)) * img.width + Math.min(img.width - 1, Math.max(0, x))) * 3 + c];
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const sx = (x + 0.5) / 4 - 0.5;
      const sy = (y + 0.5) / 4 - 0.5;
      const [x0, y0] = [Math.floor(sx), Math.floor(sy)];
      const [fx, fy] = [sx - x0, sy - y0];
      for (let c = 0; c < 3; c++) {
        const top = at(x0, y0, c) * (1 - fx) + at(x0 + 1, y0, c) * fx;
        const bottom = at(x0, y0 + 1, c) * (1 - fx) + at(x0 + 1, y0 + 1, c) * fx;
        data[(y * w + x) * 3 + c] = Math.round(top * (1 - fy) + bottom * fy);
      }
    }
  return { width: w, height: h, data };
}

/** The ×4 upscale of a 64² picture by the upscaler at `path` (prompt: the scene's caption). */
function upscaled(path: string, scenes: Scene[], o: { steps: number; noiseLevel: number; seed: number }): Image[] {
  const m = loadUpscaler(path);
  try {
    return scenes.map((scene, i) =>
      noGrad(() =>
        scope(() => {
          const low = renderScene(scene, { imageSize: 64 });
          const x = tensor(new Uint8Array(low.data), { shape: [1, 64, 64, 3] })
            .permute(0, 3, 1, 2)
            .float()
            .div(255);
          const r = upscale(m, x, {
            prompt: caption(scene),
            steps: o.steps,
            cfg: 1,
            noiseLevel: o.noiseLevel,
            seed: o.seed + i,
          });
          const bytes = r.images.clamp(0, 1).mul(255).add(0.5).to("uint8").permute(0, 2, 3, 1).contiguous();
          const data = new Uint8Array(bytes.toTypedArray() as Uint8Array);
          r.latents.dispose();
          r.images.dispose();
          return { width: 256, height: 256, data };
        }),
      ),
    );
  } finally {
    disposeUpscaler(m);
  }
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

/** The table: naive resize, each upscaler in `upscalers`, native 256². */
export function measureDotDetail(
  upscalers: { name: string; path: string }[],
  o: { scenes?: number; seed?: number; steps?: number; noiseLevel?: number } = {},
): DetailRow[] {
  const scenes = generateSubject(o.seed ?? 11, o.scenes ?? 4);
  const read = (imgs: Image[]) => mean(imgs.map((img) => readDotDetail(img).crispness));
  const rows: DetailRow[] = [
    {
      name: "stage 1 alone (bilinear ×4)",
      crispness: read(scenes.map((s) => resize4(renderScene(s, { imageSize: 64 })))),
    },
  ];
  for (const u of upscalers)
    rows.push({
      name: u.name,
      crispness: read(
        upscaled(u.path, scenes, { steps: o.steps ?? 20, noiseLevel: o.noiseLevel ?? 20, seed: o.seed ?? 11 }),
      ),
    });
  rows.push({
    name: "native 256² render (ceiling)",
    crispness: read(scenes.map((s) => renderScene(s, { imageSize: 256 }))),
  });
  return rows;
}
