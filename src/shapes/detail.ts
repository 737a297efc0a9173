// A 256² reader of the Dreambooth subject's fine detail, hand-written and
// deterministic like analyser.ts: how crisply the red dot sits on the yellow
// star. At 64² the dot's rim is one or two blended pixels whatever the model
// does; at 256² a naive resize of a 64² picture leaves a rim ~4 px wide of
// orange blends, while a good ×4 upscaler draws it sharp. The reading:
//   dotPixels — pixels near the palette's red (RGB distance < NEAR),
//   rimPixels — pixels that are neither near red nor near yellow but lie
//               near the red–yellow segment (a blend of the two),
//   crispness — dotPixels / (dotPixels + rimPixels), in [0, 1]; 0 when no dot.
import type { PixelImage } from "./analyser.js";
import { PALETTE } from "./world.js";

export interface DotDetail {
  dotPixels: number;
  rimPixels: number;
  crispness: number;
}

/** RGB distance under which a pixel counts as a palette colour. */
const NEAR = 60;
/** Largest distance from the red–yellow segment for a pixel to count as their blend. */
const ON_SEGMENT = 30;

export function readDotDetail(img: PixelImage): DotDetail {
  const ch = img.channels ?? 3;
  if (img.width < 128 || img.height < 128)
    throw new Error(
      `dot detail: needs a picture of at least 128×128 (the detail is sub-pixel below), got ${img.width}×${img.height}`,
    );
  if (img.data.length !== img.width * img.height * ch)
    throw new Error(`dot detail: ${img.data.length} bytes do not make a ${img.width}×${img.height}×${ch} picture`);
  const red = PALETTE.red;
  const yellow = PALETTE.yellow;
  const seg = [yellow[0] - red[0], yellow[1] - red[1], yellow[2] - red[2]];
  const segLen2 = seg[0] ** 2 + seg[1] ** 2 + seg[2] ** 2;
  let dotPixels = 0;
  let rimPixels = 0;
  for (let p = 0; p < img.width * img.height; p++) {
    const o = p * ch;
    const c = [img.data[o], img.data[o + 1], img.data[o + 2]];
    const dRed = Math.hypot(c[0] - red[0], c[1] - red[1], c[2] - red[2]);
    if (dRed < NEAR) {
      dotPixels++;
      continue;
    }
    if (Math.hypot(c[0] - yellow[0], c[1] - yellow[1], c[2] - yellow[2]) < NEAR) continue;
    // distance from the segment red → yellow (projection clamped to it)
    const t = Math.max(
      0,
      Math.min(1, ((c[0] - red[0]) * seg[0] + (c[1] - red[1]) * seg[1] + (c[2] - red[2]) * seg[2]) / segLen2),
    );
    const d = Math.hypot(c[0] - red[0] - t * seg[0], c[1] - red[1] - t * seg[1], c[2] - red[2] - t * seg[2]);
    if (d < ON_SEGMENT) rimPixels++;
  }
  const total = dotPixels + rimPixels;
  return { dotPixels, rimPixels, crispness: dotPixels === 0 ? 0 : dotPixels / total };
}
