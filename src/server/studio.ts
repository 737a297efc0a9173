// `atelier studio`: one Node process serving the pages of web/ and the JSON
// API over a workspace, with the job queue and its runner. It binds
// 127.0.0.1 unless told otherwise; on any other host every request needs
// the token (generated when not given).
import { randomBytes } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { packageRoot } from "../index.js";
import { jobRoutes } from "./api-jobs.js";
import { mergeRoutes } from "./api-merge.js";
import { studioJobRoutes } from "./api-studio-jobs.js";
import { workspaceRoutes } from "./api-workspace.js";
import { openApi, type Route, Router, sendJson, serveStatic, TOKEN_COOKIE, tokenIn } from "./http.js";
import { JobQueue } from "./queue.js";
import { JobRunner } from "./runner.js";
import { openWorkspace } from "./workspace-files.js";

export interface StudioOptions {
  workspace: string;
  port?: number;
  host?: string;
  /** Required off-localhost; generated there when not given. */
  token?: string;
  /** Upload limit in bytes (default 16 MiB). */
  maxUpload?: number;
  /** The workers' environment. */
  env?: NodeJS.ProcessEnv;
}

export interface StudioContext {
  root: string;
  queue: JobQueue;
  runner: JobRunner;
  maxUpload: number;
  /** Adds a job and starts the queue when it is idle. */
  enqueue: JobQueue["add"];
}

export interface Studio {
  server: Server;
  url: string;
  /** null on localhost (no token needed). */
  token: string | null;
  root: string;
  close(): Promise<void>;
}

export const DEFAULT_PORT = 7860;
export const DEFAULT_MAX_UPLOAD = 16 << 20;

const LOOPBACK = new Set(["127.0.0.1", "localhost", "::1"]);

export async function startStudio(o: StudioOptions): Promise<Studio> {
  const host = o.host ?? "127.0.0.1";
  const token = LOOPBACK.has(host) ? null : (o.token ?? randomBytes(24).toString("base64url"));
  const root = openWorkspace(o.workspace);
  mkdirSync(join(root, ".atelier"), { recursive: true });
  const queue = new JobQueue(join(root, ".atelier"));
  const runner = new JobRunner(root, queue, { env: o.env });
  const enqueue: JobQueue["add"] = (kind, name, params) => {
    const job = queue.add(kind, name, params);
    setImmediate(() => runner.kick());
    return job;
  };
  const ctx: StudioContext = { root, queue, runner, maxUpload: o.maxUpload ?? DEFAULT_MAX_UPLOAD, enqueue };
  const pkg = packageRoot();
  const version = (JSON.parse(readFileSync(join(pkg, "package.json"), "utf8")) as { version: string }).version;
  const routes: Route[] = [
    {
      method: "GET",
      path: "/api/health",
      summary: "the studio is up; the running job",
      handler: () => ({ ok: true, version, running: runner.currentId }),
    },
    ...workspaceRoutes(ctx),
    ...jobRoutes(ctx),
    ...mergeRoutes(ctx),
    ...studioJobRoutes(ctx),
  ];
  const document = openApi(routes, version);
  routes.push({ method: "GET", path: "/api/openapi.json", summary: "this document", handler: () => document });
  const router = new Router(routes);
  const webDir = join(pkg, "web");
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://studio.invalid");
    if (token !== null) {
      const how = tokenIn(req, url, token);
      if (how === null) {
        sendJson(res, 401, { error: "this studio needs its token: Authorization: Bearer TOKEN (or ?token=TOKEN)" });
        return;
      }
      if (how === "query") res.setHeader("Set-Cookie", `${TOKEN_COOKIE}=${token}; HttpOnly; SameSite=Strict; Path=/`);
    }
    if (url.pathname.startsWith("/api/")) {
      void router.handle(req, res, url);
      return;
    }
    if (req.method !== "GET" || !serveStatic(res, webDir, url.pathname))
      sendJson(res, 404, { error: `no page ${url.pathname}` });
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(o.port ?? DEFAULT_PORT, host, () => resolve());
  });
  runner.start();
  const addr = server.address() as AddressInfo;
  const shownHost = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  return {
    server,
    url: `http://${shownHost}:${addr.port}/`,
    token,
    root,
    close: async () => {
      runner.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      queue.close();
    },
  };
}
