// atelier studio [--workspace DIR] [--port N] [--host H] [--token T]: starts the studio and runs until Ctrl-C.
import { DEFAULT_PORT, startStudio } from "../server/studio.js";
import { defaultWorkspace } from "../train/workspace.js";
import { num, parse, str } from "./args.js";

export async function studioCommand(argv: string[]): Promise<number> {
  const { values } = parse(
    argv,
    {
      workspace: { type: "string" },
      port: { type: "string" },
      host: { type: "string" },
      token: { type: "string" },
      "max-upload-mb": { type: "string" },
    },
    { min: 0, max: 0, names: "only flags" },
  );
  const mb = num(values, "max-upload-mb", { min: 1, max: 1024 });
  const studio = await startStudio({
    workspace: str(values, "workspace") ?? defaultWorkspace(),
    port: num(values, "port", { integer: true, min: 0, max: 65535 }) ?? DEFAULT_PORT,
    host: str(values, "host"),
    token: str(values, "token") || process.env.ATELIER_STUDIO_TOKEN || undefined,
    maxUpload: mb === undefined ? undefined : Math.round(mb * 2 ** 20),
  });
  console.log(`atelier studio: workspace ${studio.root}`);
  console.log(`atelier studio: open ${studio.url}${studio.token ? `?token=${studio.token}` : ""}`);
  if (studio.token) console.log(`atelier studio: token ${studio.token} (every request needs it off localhost)`);
  await new Promise<void>((resolve) => {
    const stop = () => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
      void studio.close().then(resolve);
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
  return 0;
}
