// The studio's job queue, kept in SQLite (better-sqlite3: synchronous, so a
// state change is on disk before the request that made it is answered; WAL
// journal, so a kill of the server never leaves the file half-written).
// A job's events (steps, samples, artifacts, logs) are rows too: the loss
// chart and the gallery of a job survive a restart, and an SSE client that
// connects late is sent what it missed.
import { join } from "node:path";
import Database from "better-sqlite3";

export type JobKind =
  | "train"
  | "generate"
  | "create-model"
  | "merge-lora"
  | "merge-checkpoints"
  | "class-images"
  | "eval";
export type JobStatus = "queued" | "running" | "paused" | "done" | "failed" | "cancelled";

export interface Job {
  id: number;
  kind: JobKind;
  name: string;
  status: JobStatus;
  params: Record<string, unknown>;
  created: string;
  started: string | null;
  ended: string | null;
  step: number;
  total: number;
  eta_seconds: number | null;
  error: string | null;
  /** A state folder the next start resumes from (train). */
  resume_from: string | null;
  result: Record<string, unknown> | null;
  /** Times a worker was started for it. */
  attempts: number;
  /** The process id of its last worker. */
  worker_pid: number | null;
}

export interface JobEvent {
  seq: number;
  job_id: number;
  type: string;
  data: Record<string, unknown>;
}

interface Row extends Omit<Job, "params" | "result"> {
  params: string;
  result: string | null;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS jobs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  kind TEXT NOT NULL, name TEXT NOT NULL, status TEXT NOT NULL, params TEXT NOT NULL,
  created TEXT NOT NULL, started TEXT, ended TEXT,
  step INTEGER NOT NULL DEFAULT 0, total INTEGER NOT NULL DEFAULT 0, eta_seconds REAL,
  error TEXT, resume_from TEXT, result TEXT, attempts INTEGER NOT NULL DEFAULT 0, worker_pid INTEGER
);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id INTEGER NOT NULL REFERENCES jobs(id), type TEXT NOT NULL, step INTEGER, data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, seq);
`;

const now = () => new Date().toISOString();

export class JobQueue {
  readonly db: Database.Database;

  /** Opens (or makes) WORKSPACE/.atelier/studio.sqlite. */
  constructor(dir: string) {
    this.db = new Database(join(dir, "studio.sqlite"));
    this.db.pragma("journal_mode = WAL");
    this.db.pragma("synchronous = NORMAL");
    this.db.exec(SCHEMA);
  }

  close(): void {
    this.db.close();
  }

  add(kind: JobKind, name: string, params: Record<string, unknown>): Job {
    const r = this.db
      .prepare("INSERT INTO jobs (kind, name, status, params, created) VALUES (?, ?, 'queued', ?, ?)")
      .run(kind, name, JSON.stringify(params), now());
    return this.get(Number(r.lastInsertRowid))!;
  }

  get(id: number): Job | null {
    const row = this.db.prepare("SELECT * FROM jobs WHERE id = ?").get(id) as Row | undefined;
    return row ? parse(row) : null;
  }

  list(limit = 200): Job[] {
    return (this.db.prepare("SELECT * FROM jobs ORDER BY id DESC LIMIT ?").all(limit) as Row[]).map(parse);
  }

  /** The oldest queued job, or null. */
  next(): Job | null {
    const row = this.db.prepare("SELECT * FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1").get() as
      | Row
      | undefined;
    return row ? parse(row) : null;
  }

  /** Jobs a dead server left running. */
  running(): Job[] {
    return (this.db.prepare("SELECT * FROM jobs WHERE status = 'running' ORDER BY id").all() as Row[]).map(parse);
  }

  update(id: number, fields: Partial<Omit<Job, "id" | "kind" | "created">>): void {
    const keys = Object.keys(fields) as (keyof typeof fields)[];
    if (keys.length === 0) return;
    const values = keys.map((k) => {
      const v = fields[k];
      return k === "params" || k === "result" ? (v === null ? null : JSON.stringify(v)) : v;
    });
    this.db.prepare(`UPDATE jobs SET ${keys.map((k) => `${k} = ?`).join(", ")} WHERE id = ?`).run(...values, id);
  }

  start(id: number): void {
    this.db
      .prepare("UPDATE jobs SET status = 'running', started = ?, attempts = attempts + 1 WHERE id = ?")
      .run(now(), id);
  }

  finish(id: number, status: JobStatus, o: { error?: string; result?: Record<string, unknown> } = {}): void {
    this.update(id, {
      status,
      ended: now(),
      error: o.error ?? null,
      ...(o.result ? { result: o.result } : {}),
    });
  }

  addEvent(jobId: number, type: string, data: Record<string, unknown>): JobEvent {
    const step = typeof data.step === "number" ? data.step : null;
    const r = this.db
      .prepare("INSERT INTO events (job_id, type, step, data) VALUES (?, ?, ?, ?)")
      .run(jobId, type, step, JSON.stringify(data));
    return { seq: Number(r.lastInsertRowid), job_id: jobId, type, data };
  }

  /** A job's events after `afterSeq`, oldest first (of `types` when given). */
  events(jobId: number, afterSeq = 0, types?: readonly string[]): JobEvent[] {
    const filter = types ? ` AND type IN (${types.map(() => "?").join(", ")})` : "";
    const rows = this.db
      .prepare(`SELECT seq, job_id, type, data FROM events WHERE job_id = ? AND seq > ?${filter} ORDER BY seq`)
      .all(jobId, afterSeq, ...(types ?? [])) as { seq: number; job_id: number; type: string; data: string }[];
    return rows.map((r) => ({ ...r, data: JSON.parse(r.data) as Record<string, unknown> }));
  }

  /** Removes a job's events of one type. */
  dropEvents(jobId: number, type: string): void {
    this.db.prepare("DELETE FROM events WHERE job_id = ? AND type = ?").run(jobId, type);
  }

  /** A resumed run redoes the steps after its state: their recorded steps and samples go. */
  dropEventsAfterStep(jobId: number, step: number): void {
    this.db
      .prepare("DELETE FROM events WHERE job_id = ? AND step IS NOT NULL AND step > ? AND type IN ('step', 'sample')")
      .run(jobId, step);
  }
}

function parse(r: Row): Job {
  return {
    ...r,
    params: JSON.parse(r.params) as Record<string, unknown>,
    result: r.result === null ? null : (JSON.parse(r.result) as Record<string, unknown>),
  };
}
