// Element-wise arithmetic, comparisons, selection and reductions.
import { defOp, type OpRef } from "../dispatch.js";
import { type DType, dtypeCode } from "../dtype.js";
import { Tensor } from "../tensor.js";

export type Operand = Tensor | number;

/** An op with a Tensor overload and a Scalar overload (add.Tensor / add.Scalar). */
function binary(name: string) {
  const tensorOp = defOp(`aten::${name}.Tensor`);
  const scalarOp = defOp(`aten::${name}.Scalar`);
  return (a: Tensor, b: Operand): Tensor => (b instanceof Tensor ? tensorOp.t(a.id, b.id) : scalarOp.t(a.id, b));
}

function unary(qualified: string) {
  const op = defOp(qualified);
  return (a: Tensor): Tensor => op.t(a.id);
}

const addT = defOp("aten::add.Tensor");
const addS = defOp("aten::add.Scalar");
const subT = defOp("aten::sub.Tensor");
const subS = defOp("aten::sub.Scalar");

/** a + alpha·b */
export const add = (a: Tensor, b: Operand, alpha = 1): Tensor =>
  b instanceof Tensor ? addT.t(a.id, b.id, alpha) : addS.t(a.id, b, alpha);
/** a − alpha·b */
export const sub = (a: Tensor, b: Operand, alpha = 1): Tensor =>
  b instanceof Tensor ? subT.t(a.id, b.id, alpha) : subS.t(a.id, b, alpha);
const rsubS = defOp("aten::rsub.Scalar");
/** number − tensor */
export const rsub = (a: number, b: Tensor): Tensor => rsubS.t(b.id, a);

export const mul = binary("mul");
export const div = binary("div");
export const eq = binary("eq");
export const ne = binary("ne");
export const lt = binary("lt");
export const le = binary("le");
export const gt = binary("gt");
export const ge = binary("ge");

const powTT = defOp("aten::pow.Tensor_Tensor");
const powTS = defOp("aten::pow.Tensor_Scalar");
export const pow = (a: Tensor, e: Operand): Tensor => (e instanceof Tensor ? powTT.t(a.id, e.id) : powTS.t(a.id, e));

const maximumOp = defOp("aten::maximum");
const minimumOp = defOp("aten::minimum");
export const maximum = (a: Tensor, b: Tensor): Tensor => maximumOp.t(a.id, b.id);
export const minimum = (a: Tensor, b: Tensor): Tensor => minimumOp.t(a.id, b.id);

export const neg = unary("aten::neg");
export const exp = unary("aten::exp");
export const log = unary("aten::log");
export const log1p = unary("aten::log1p");
export const sqrt = unary("aten::sqrt");
export const rsqrt = unary("aten::rsqrt");
export const abs = unary("aten::abs");
export const sin = unary("aten::sin");
export const cos = unary("aten::cos");
export const square = unary("aten::square");
export const reciprocal = unary("aten::reciprocal");
export const sign = unary("aten::sign");
export const floor = unary("aten::floor");
export const ceil = unary("aten::ceil");
export const round = unary("aten::round");
export const erf = unary("aten::erf");
export const isnan = unary("aten::isnan");
export const isfinite = unary("aten::isfinite");
export const logicalNot = unary("aten::logical_not");

const logicalAndOp = defOp("aten::logical_and");
const logicalOrOp = defOp("aten::logical_or");
export const logicalAnd = (a: Tensor, b: Tensor): Tensor => logicalAndOp.t(a.id, b.id);
export const logicalOr = (a: Tensor, b: Tensor): Tensor => logicalOrOp.t(a.id, b.id);

const addcmulOp = defOp("aten::addcmul");
const addcdivOp = defOp("aten::addcdiv");
/** a + value·t1·t2 */
export const addcmul = (a: Tensor, t1: Tensor, t2: Tensor, value = 1): Tensor => addcmulOp.t(a.id, t1.id, t2.id, value);
/** a + value·t1/t2 */
export const addcdiv = (a: Tensor, t1: Tensor, t2: Tensor, value = 1): Tensor => addcdivOp.t(a.id, t1.id, t2.id, value);

const lerpS = defOp("aten::lerp.Scalar");
const lerpT = defOp("aten::lerp.Tensor");
/** a + w·(b − a) */
export const lerp = (a: Tensor, b: Tensor, w: Operand): Tensor =>
  w instanceof Tensor ? lerpT.t(a.id, b.id, w.id) : lerpS.t(a.id, b.id, w);

const whereSelf = defOp("aten::where.self");
const whereScalarOther = defOp("aten::where.ScalarOther");
const whereScalarSelf = defOp("aten::where.ScalarSelf");
const whereScalar = defOp("aten::where.Scalar");
/** cond ? a : b, element-wise with broadcasting. */
export function where(cond: Tensor, a: Operand, b: Operand): Tensor {
  if (a instanceof Tensor)
    return b instanceof Tensor ? whereSelf.t(cond.id, a.id, b.id) : whereScalarOther.t(cond.id, a.id, b);
  return b instanceof Tensor ? whereScalarSelf.t(cond.id, a, b.id) : whereScalar.t(cond.id, a, b);
}

const maskedFillS = defOp("aten::masked_fill.Scalar");
export const maskedFill = (a: Tensor, mask: Tensor, value: number): Tensor => maskedFillS.t(a.id, mask.id, value);

const clampOp = defOp("aten::clamp");
export const clamp = (a: Tensor, min: number | null, max: number | null = null): Tensor => clampOp.t(a.id, min, max);

// ---- reductions -------------------------------------------------------------

export interface ReduceOptions {
  keepdim?: boolean;
  dtype?: DType;
}

function dimList(dim: number | readonly number[] | undefined): number[] | null {
  if (dim === undefined) return null;
  return typeof dim === "number" ? [dim] : (dim as number[]);
}

function reduction(all: OpRef, byDim: OpRef) {
  return (a: Tensor, dim?: number | readonly number[], o: ReduceOptions = {}): Tensor => {
    const dtype = o.dtype ? dtypeCode(o.dtype) : null;
    return dim === undefined ? all.t(a.id, dtype) : byDim.t(a.id, dimList(dim), o.keepdim ?? false, dtype);
  };
}

export const sum = reduction(defOp("aten::sum"), defOp("aten::sum.dim_IntList"));
export const mean = reduction(defOp("aten::mean"), defOp("aten::mean.dim"));

const varOp = defOp("aten::var.correction");
const stdOp = defOp("aten::std.correction");
/** Variance with Bessel's correction by default (torch.var); `correction: 0` for the population variance. */
export const variance = (
  a: Tensor,
  dim?: number | readonly number[],
  o: { keepdim?: boolean; correction?: number } = {},
) => varOp.t(a.id, dimList(dim), o.correction ?? 1, o.keepdim ?? false);
export const std = (a: Tensor, dim?: number | readonly number[], o: { keepdim?: boolean; correction?: number } = {}) =>
  stdOp.t(a.id, dimList(dim), o.correction ?? 1, o.keepdim ?? false);

const maxAll = defOp("aten::max");
const minAll = defOp("aten::min");
const amaxOp = defOp("aten::amax");
const aminOp = defOp("aten::amin");
const maxDim = defOp("aten::max.dim");
const minDim = defOp("aten::min.dim");
/** The largest element, or the largest along dims (values only; see maxWithIndices). */
export const max = (a: Tensor, dim?: number | readonly number[], keepdim = false): Tensor =>
  dim === undefined ? maxAll.t(a.id) : amaxOp.t(a.id, dimList(dim), keepdim);
export const min = (a: Tensor, dim?: number | readonly number[], keepdim = false): Tensor =>
  dim === undefined ? minAll.t(a.id) : aminOp.t(a.id, dimList(dim), keepdim);
export const maxWithIndices = (a: Tensor, dim: number, keepdim = false): [Tensor, Tensor] =>
  maxDim.ts(a.id, dim, keepdim) as [Tensor, Tensor];
export const minWithIndices = (a: Tensor, dim: number, keepdim = false): [Tensor, Tensor] =>
  minDim.ts(a.id, dim, keepdim) as [Tensor, Tensor];

const argmaxOp = defOp("aten::argmax");
const argminOp = defOp("aten::argmin");
export const argmax = (a: Tensor, dim?: number, keepdim = false): Tensor => argmaxOp.t(a.id, dim ?? null, keepdim);
export const argmin = (a: Tensor, dim?: number, keepdim = false): Tensor => argminOp.t(a.id, dim ?? null, keepdim);

const normOp = defOp("aten::linalg_vector_norm");
/** The p-norm over all elements or along dims (torch.linalg.vector_norm). */
export const norm = (a: Tensor, p = 2, dim?: number | readonly number[], keepdim = false): Tensor =>
  normOp.t(a.id, p, dimList(dim), keepdim);

const cumsumOp = defOp("aten::cumsum");
const cumprodOp = defOp("aten::cumprod");
export const cumsum = (a: Tensor, dim: number): Tensor => cumsumOp.t(a.id, dim);
export const cumprod = (a: Tensor, dim: number): Tensor => cumprodOp.t(a.id, dim);

const anyOp = defOp("aten::any");
const allOp = defOp("aten::all");
export const any = (a: Tensor): Tensor => anyOp.t(a.id);
export const all = (a: Tensor): Tensor => allOp.t(a.id);
