// Errors marked where they are: the API names the field it refuses
// (body.name, body.config.lora.rank, body.loras[0].name); the form's input of
// that name is marked and gets the message beside it, and the form's general
// message line (`.error[data-for=body]`) gets it too. Shared by every page.
import { $, $$ } from "./api.js";

export function clearErrors(form) {
  for (const e of $$(".invalid", form)) e.classList.remove("invalid");
  for (const e of $$(".field-error", form)) e.remove();
  for (const e of $$(".error", form)) e.textContent = "";
}

/** The input of an API field: `body.` (and `body.config.`) dropped, then renamed by `aliases`. */
export const formField =
  (form, aliases = {}) =>
  (field) => {
    const name = field.replace(/^body\.(config\.)?/, "");
    return form.elements.namedItem(aliases[name] ?? name) ?? null;
  };

/** Marks the input of the field an API error names, with the message; true when there was one to mark. */
export function showError(form, err, fieldElement = formField(form)) {
  const target = err.field ? fieldElement(err.field) : null;
  if (target) {
    target.classList.add("invalid");
    target.title = err.message;
    const label = target.closest("label");
    if (label) {
      const msg = Object.assign(document.createElement("span"), {
        className: "error field-error",
        textContent: err.message,
      });
      label.append(msg);
    }
    target.focus();
  }
  const general = $(".error[data-for='body']", form);
  if (general) general.textContent = err.message;
  return target !== null;
}
