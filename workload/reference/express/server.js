'use strict';
// loopscale's reference Express server: the real runtime that the emulated event-loop mode
// (`loopscale-workload serve` with LOOPSCALE_MODE=event-loop) claims to behave like.
//
// Routes mean the same as the emulation's (see ../README.md):
//   /hello                       tiny JSON answer (the framework's own per-request cost)
//   /io?ms=N                     await a setTimeout of N ms (network-style I/O: stays on the loop)
//   /cpu?ms=N                    burn N ms of CPU on the event loop (it blocks, as in any Node app)
//   /cpu-inline?ms=N             the same as /cpu: Express has no other place to run a sync function
//   /mixed?io_ms=N&cpu_ms=M      await the timer, then burn CPU on the loop
//   /offload?ms=N                crypto.pbkdf2 on libuv's thread pool, sized to about N ms of CPU
//   /healthz                     200 while the process runs
//   /readyz                      200 once every cluster worker listens, 503 before
// Bad parameters get 400 with a one-line reason; unknown paths 404.
//
// Processes: Node's `cluster` module, LOOPSCALE_PROCESSES (or PROCESSES) workers, default 1.
// LOOPSCALE_BALANCING=round-robin (default, cluster's Linux default: the primary accepts and hands
// connections to workers) or shared-socket (cluster.SCHED_NONE: workers accept from one socket).
// LOOPSCALE_LIBUV_THREADPOOL_SIZE sets the workers' UV_THREADPOOL_SIZE (libuv's default: 4).
// The emulation's other knobs (thread pool, GIL, request overhead) do not apply to real Node.

const cluster = require('node:cluster');
const crypto = require('node:crypto');
const { setTimeout: sleep } = require('node:timers/promises');

/** The emulation's limit: at most 60 s of work per request (each parameter and, for /mixed,
 *  their sum), in decimal milliseconds. */
const MAX_MS = 60000;

function intFromEnv(names, fallback, min) {
  for (const name of names) {
    const raw = process.env[name];
    if (raw === undefined || raw === '') continue;
    if (!/^\d+$/.test(raw) || Number(raw) < min) {
      console.error(`${name} must be an integer >= ${min}, got ${JSON.stringify(raw)}`);
      process.exit(2);
    }
    return Number(raw);
  }
  return fallback;
}

/** Busy-loops until this process's CPU time (user + system) advanced by `ms` milliseconds.
 *  A worker is one event loop thread, so process CPU time is that thread's CPU time, which is
 *  how the emulation counts CPU work. Time spent on libuv pool threads of the same process
 *  (concurrent /offload) is counted too: Node 20 has no per-thread CPU clock. */
function burnCpu(ms) {
  if (ms <= 0) return 0;
  const targetMicros = ms * 1000;
  const start = process.cpuUsage();
  let x = 1;
  for (;;) {
    // About 20-50 µs of integer work between clock reads (a read costs ~1 µs).
    for (let i = 0; i < 20000; i++) x = (Math.imul(x, 1103515245) + 12345) | 0;
    const used = process.cpuUsage(start);
    if (used.user + used.system >= targetMicros) return x;
  }
}

/** PBKDF2 iterations per millisecond of CPU on this machine, measured once at start-up so that
 *  /offload?ms=N keeps a libuv pool thread busy for about N ms. */
function measurePbkdf2IterationsPerMs() {
  const iterations = 20000;
  crypto.pbkdf2Sync('warm-up', 'salt', 1000, 32, 'sha256');
  const start = process.cpuUsage();
  crypto.pbkdf2Sync('loopscale', 'salt', iterations, 32, 'sha256');
  const used = process.cpuUsage(start);
  const micros = Math.max(1, used.user + used.system);
  return Math.max(1, (iterations * 1000) / micros);
}

class BadRequest extends Error {}

/** A decimal number as the emulation reads one (Rust's f64 syntax, surrounding whitespace
 *  trimmed): digits with an optional fraction and exponent; no hex, no Infinity/NaN. */
const DECIMAL = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/;

/** Parses a required duration parameter (decimal milliseconds in 0..=MAX_MS) as the emulation
 *  does, or throws BadRequest with the reason. */
function msParam(query, name) {
  const raw = query[name];
  if (raw === undefined) throw new BadRequest(`missing query parameter ${name} (milliseconds, 0..=${MAX_MS})`);
  if (typeof raw !== 'string') throw new BadRequest(`query parameter ${name} given more than once`);
  const text = raw.trim();
  const value = DECIMAL.test(text) ? Number(text) : NaN;
  if (!Number.isFinite(value)) throw new BadRequest(`${name} must be a number of milliseconds, got ${JSON.stringify(raw)}`);
  if (value < 0) throw new BadRequest(`${name} must not be negative, got ${JSON.stringify(raw)}`);
  if (value > MAX_MS) throw new BadRequest(`${name} must be at most ${MAX_MS}, got ${JSON.stringify(raw)}`);
  return value;
}

function startWorker() {
  const express = require('express');
  const port = intFromEnv(['PORT'], 8080, 0);
  const host = process.env.HOST || '0.0.0.0';
  const iterationsPerMs = measurePbkdf2IterationsPerMs();
  let ready = false;
  process.on('message', (msg) => {
    if (msg && msg.type === 'loopscale-ready') ready = Boolean(msg.ready);
  });

  const app = express();
  app.disable('x-powered-by');

  app.get('/hello', (req, res) => {
    res.json({ message: 'hello' });
  });
  app.get('/io', async (req, res) => {
    const ms = msParam(req.query, 'ms');
    await sleep(ms);
    res.json({ route: 'io', io_ms: ms });
  });
  app.get('/cpu', (req, res) => {
    const ms = msParam(req.query, 'ms');
    burnCpu(ms);
    res.json({ route: 'cpu', cpu_ms: ms });
  });
  app.get('/cpu-inline', (req, res) => {
    const ms = msParam(req.query, 'ms');
    burnCpu(ms);
    res.json({ route: 'cpu-inline', cpu_ms: ms });
  });
  app.get('/mixed', async (req, res) => {
    const ioMs = msParam(req.query, 'io_ms');
    const cpuMs = msParam(req.query, 'cpu_ms');
    if (ioMs + cpuMs > MAX_MS) throw new BadRequest(`io_ms + cpu_ms must be at most ${MAX_MS}, got ${ioMs + cpuMs}`);
    await sleep(ioMs);
    burnCpu(cpuMs);
    res.json({ route: 'mixed', io_ms: ioMs, cpu_ms: cpuMs });
  });
  app.get('/offload', async (req, res) => {
    const ms = msParam(req.query, 'ms');
    const iterations = Math.max(1, Math.round(ms * iterationsPerMs));
    await new Promise((resolve, reject) => {
      crypto.pbkdf2('loopscale', 'salt', iterations, 32, 'sha256', (err) => (err ? reject(err) : resolve()));
    });
    res.json({ route: 'offload', ms });
  });
  app.get('/healthz', (req, res) => {
    res.type('text/plain').send('ok\n');
  });
  app.get('/readyz', (req, res) => {
    if (ready) res.type('text/plain').send('ready\n');
    else res.status(503).type('text/plain').send('not ready: waiting for every worker to listen\n');
  });
  // Another method on a known path: 405, as the emulation (axum) and FastAPI answer.
  app.all(['/hello', '/io', '/cpu', '/cpu-inline', '/mixed', '/offload', '/healthz', '/readyz'], (req, res) => {
    res.status(405).set('allow', 'GET, HEAD').type('text/plain').send(`method ${req.method} not allowed on ${req.path}\n`);
  });
  app.use((req, res) => {
    res.status(404).type('text/plain').send(`no route ${req.method} ${req.path}\n`);
  });
  // Express recognises an error handler by its four parameters.
  // eslint-disable-next-line no-unused-vars
  app.use((err, req, res, next) => {
    if (err instanceof BadRequest) {
      res.status(400).type('text/plain').send(`${err.message}\n`);
    } else {
      res.status(err.status || 500).type('text/plain').send(`${(err.message || 'internal error').split('\n')[0]}\n`);
    }
  });

  const server = app.listen(port, host);
  // Idle keep-alive connections are closed on shutdown; in-flight requests finish first.
  process.on('SIGTERM', () => {
    server.close(() => process.exit(0));
    server.closeIdleConnections();
  });
  process.on('SIGINT', () => {});
}

function startPrimary() {
  const processes = intFromEnv(['LOOPSCALE_PROCESSES', 'PROCESSES'], 1, 1);
  // Check PORT here too, so a bad value stops the primary instead of a loop of dying workers.
  if (intFromEnv(['PORT'], 8080, 0) > 65535) {
    console.error(`PORT must be at most 65535, got ${process.env.PORT}`);
    process.exit(2);
  }
  const balancing = process.env.LOOPSCALE_BALANCING || 'round-robin';
  if (balancing !== 'round-robin' && balancing !== 'shared-socket') {
    console.error(`LOOPSCALE_BALANCING=${JSON.stringify(balancing)} is not allowed; allowed values: round-robin, shared-socket`);
    process.exit(2);
  }
  // Must be set before the first fork.
  cluster.schedulingPolicy = balancing === 'round-robin' ? cluster.SCHED_RR : cluster.SCHED_NONE;
  const workerEnv = {};
  const libuvThreads = intFromEnv(['LOOPSCALE_LIBUV_THREADPOOL_SIZE'], null, 1);
  if (libuvThreads !== null) {
    if (libuvThreads > 1024) {
      console.error(`LOOPSCALE_LIBUV_THREADPOOL_SIZE must be at most 1024 (libuv's limit), got ${libuvThreads}`);
      process.exit(2);
    }
    workerEnv.UV_THREADPOOL_SIZE = String(libuvThreads);
  }
  let stopping = false;
  const listening = new Set();

  const broadcastReadiness = () => {
    const ready = listening.size === processes;
    for (const worker of Object.values(cluster.workers)) {
      if (worker && worker.isConnected()) worker.send({ type: 'loopscale-ready', ready });
    }
  };
  let everListened = false;
  cluster.on('listening', (worker) => {
    everListened = true;
    listening.add(worker.id);
    broadcastReadiness();
  });
  cluster.on('exit', (worker, code, signal) => {
    listening.delete(worker.id);
    if (stopping) {
      if (Object.keys(cluster.workers).length === 0) process.exit(0);
      return;
    }
    broadcastReadiness();
    if (!worker.exitedAfterDisconnect && code !== 0 && listening.size === 0 && !everListened) {
      console.error(`worker ${worker.process.pid} exited (${signal || code}) before any worker listened; giving up`);
      process.exit(1);
    }
    console.error(`worker ${worker.process.pid} exited (${signal || code}); starting a new one`);
    cluster.fork(workerEnv);
  });
  const stop = () => {
    if (stopping) return;
    stopping = true;
    for (const worker of Object.values(cluster.workers)) worker.process.kill('SIGTERM');
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  for (let i = 0; i < processes; i++) cluster.fork(workerEnv);
}

if (cluster.isPrimary) startPrimary();
else startWorker();
