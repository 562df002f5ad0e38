// Unit tests of src/format.ts, run on the compiled lib/format.js by `jlpm test` (node --test).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  describeError,
  errorMessage,
  formatBytes,
  formatClock,
  formatDuration,
  formatExpiresIn,
  gpuFit,
  jobFacts,
  kindLabel,
  modelDetails,
  modelNote,
  parseTime,
  queueEntryText,
  queueTotalsText,
  runningText,
  snippet
} from '../lib/format.js';
import { ACTIVE_STATES } from '../lib/tokens.js';

// A fixed local "now": 2025-11-25 09:30 in the machine's own time zone.
const NOW = new Date(2025, 10, 25, 9, 30, 0);
const at = (h, m) => new Date(2025, 10, 25, h, m, 0).toISOString();

describe('formatBytes', () => {
  it('uses decimal units like `ollama list`', () => {
    assert.equal(formatBytes(94_000_000), '94 MB');
    assert.equal(formatBytes(270_898_672), '271 MB');
    assert.equal(formatBytes(1_300_000_000), '1.3 GB');
    assert.equal(formatBytes(42_500_000_000), '43 GB');
    assert.equal(formatBytes(512), '512 B');
    assert.equal(formatBytes(0), '0 B');
  });
  it('switches to whole numbers when one decimal would read 10.0', () => {
    assert.equal(formatBytes(9_960_000), '10 MB');
    assert.equal(formatBytes(9_940_000), '9.9 MB');
  });
  it('says ? for nonsense', () => {
    assert.equal(formatBytes(-1), '?');
    assert.equal(formatBytes(NaN), '?');
  });
});

describe('formatDuration', () => {
  it('writes seconds, minutes, hours and days', () => {
    assert.equal(formatDuration(45), '45 s');
    assert.equal(formatDuration(60), '1 min');
    assert.equal(formatDuration(12 * 60 + 59), '12 min');
    assert.equal(formatDuration(3 * 3600 + 12 * 60), '3 h 12 min');
    assert.equal(formatDuration(2 * 3600), '2 h');
    assert.equal(formatDuration(2 * 86400 + 5 * 3600 + 59), '2 d 5 h');
    assert.equal(formatDuration(-5), '0 s');
  });
});

describe('parseTime and formatClock', () => {
  it('parses ISO strings; Slurm placeholders give null', () => {
    assert.equal(parseTime('2025-11-25T10:42:00Z').getTime(), Date.UTC(2025, 10, 25, 10, 42));
    for (const nothing of [null, undefined, '', 'N/A', 'Unknown', 'None']) {
      assert.equal(parseTime(nothing), null);
    }
  });
  it('writes a local clock time, with the weekday or the date when not today', () => {
    assert.equal(formatClock(new Date(2025, 10, 25, 10, 42), NOW), '10:42');
    assert.equal(formatClock(new Date(2025, 10, 26, 7, 5), NOW), 'Wed 07:05');
    assert.equal(formatClock(new Date(2025, 11, 24, 7, 5), NOW), '2025-12-24 07:05');
  });
});

describe('formatExpiresIn', () => {
  it('counts down, and says when a model stays loaded', () => {
    assert.equal(formatExpiresIn(at(9, 34), NOW), 'expires in 4 min');
    assert.equal(formatExpiresIn(at(9, 29), NOW), 'expiring');
    assert.equal(formatExpiresIn('2318-08-24T12:00:00Z', NOW), 'stays loaded');
    assert.equal(formatExpiresIn(undefined, NOW), '');
  });
});

describe('jobFacts', () => {
  it('lists a pending job', () => {
    const job = {
      id: '1234',
      state: 'PENDING',
      reason: 'Resources',
      submitted_at: at(9, 28),
      estimated_start: at(10, 42),
      time_limit_s: 14_400
    };
    assert.deepEqual(jobFacts(job, NOW), [
      ['Job', '1234 (pending)'],
      ['Reason', 'Resources'],
      ['Estimated start', '10:42'],
      ['Submitted', '09:28'],
      ['Time limit', '4 h']
    ]);
  });
  it('lists a running job', () => {
    const job = {
      id: '1234',
      state: 'RUNNING',
      reason: 'None',
      node: 'gpu017',
      submitted_at: at(9, 0),
      started_at: at(9, 2),
      time_left_s: 11_520,
      time_limit_s: 14_400
    };
    assert.deepEqual(jobFacts(job, NOW), [
      ['Job', '1234 (running)'],
      ['Node', 'gpu017'],
      ['Started', '09:02'],
      ['Time left', '3 h 12 min of 4 h']
    ]);
  });
});

describe('state', () => {
  it('names every backend kind', () => {
    assert.equal(kindLabel('slurm'), 'Slurm GPU job');
    assert.equal(kindLabel('local'), 'Local backend');
    assert.equal(kindLabel('upstream'), 'Remote backend');
    assert.equal(kindLabel('relay'), 'Shared service');
    assert.equal(kindLabel('unconfigured'), 'Not configured');
  });
  it('knows the states in which Start would do nothing (state.ACTIVE_STATES)', () => {
    assert.deepEqual([...ACTIVE_STATES].sort(), ['draining', 'pending', 'ready', 'renewing', 'starting', 'submitting']);
  });
});

describe('models', () => {
  const tag = {
    name: 'smollm2:135m',
    size: 270_898_672,
    details: { family: 'llama', parameter_size: '135M', quantization_level: 'Q8_0', format: 'gguf' }
  };
  it('lists size, family, parameters and quantization', () => {
    assert.equal(modelDetails(tag), '271 MB · llama · 135M · Q8_0');
    assert.equal(modelDetails({ name: 'x' }), '');
  });
  it("shows the service's note on a model, from the tag or from the state's model_notes", () => {
    const note = 'A base model, not instruction-tuned: it continues text.';
    assert.equal(modelNote({ name: 'gemma3:270m', note }, {}), note);
    assert.equal(modelNote({ name: 'gemma3:270m' }, { 'gemma3:270m': note }), note);
    assert.equal(modelNote({ name: 'smollm2:135m' }, { 'gemma3:270m': note }), '');
    assert.equal(modelNote({ name: 'x' }, undefined), '');
  });
  it('says whether a model fits the GPU', () => {
    const gpu = {
      gpu_memory_gb: 40,
      models: [
        { name: 'small', size_gb: 0.3, fits: true },
        { name: 'big', size_gb: 42.5, fits: false }
      ]
    };
    assert.deepEqual(gpuFit('small', gpu), { fits: true, text: 'fits the GPU (0.3 GB of 40 GB)' });
    assert.deepEqual(gpuFit('big', gpu), { fits: false, text: 'too large for the GPU (42.5 GB > 40 GB)' });
    assert.equal(gpuFit('other', gpu), null);
    assert.equal(gpuFit('small', null), null);
    const unknown = { gpu_memory_gb: 40, models: [{ name: 'x', size_gb: null, fits: null }] };
    assert.equal(gpuFit('x', unknown), null);
  });
  it('describes loaded models', () => {
    const ps = { ...tag, size_vram: 270_898_672, expires_at: at(9, 34), context_length: 8192 };
    assert.equal(runningText(ps, NOW), '271 MB in GPU memory, context 8192, expires in 4 min');
    assert.equal(runningText({ name: 'x', size: 2e9, size_vram: 1e9 }, NOW), '2.0 GB, 50% in GPU memory');
    assert.equal(runningText({ name: 'x', size: 2e9, size_vram: 0 }, NOW), '2.0 GB on CPU');
  });
});

describe('queue', () => {
  it('describes my requests', () => {
    const waiting = { id: 'a', model: 'smollm2:135m', state: 'waiting', position: 2, waited_s: 12 };
    assert.equal(queueEntryText(waiting), 'smollm2:135m: waiting, position 2 (12 s)');
    const running = { id: 'b', model: 'smollm2:135m', state: 'running', running_s: 75 };
    assert.equal(queueEntryText(running), 'smollm2:135m: running (1 min)');
    assert.equal(queueEntryText({ ...running, user: 'ann' }), 'ann, smollm2:135m: running (1 min)');
  });
  it('sums up the totals', () => {
    const totals = {
      waiting: 3,
      running: 4,
      users_waiting: 2,
      max_concurrent: 4,
      max_queue: 256,
      max_queue_per_user: 16
    };
    assert.equal(queueTotalsText(totals), '4 running of 4 slots, 3 waiting (2 users)');
    assert.equal(queueTotalsText({ ...totals, waiting: 0, running: 0, max_concurrent: 0 }), '0 running, 0 waiting');
  });
});

describe('errors', () => {
  it('reads every error format of the service', () => {
    assert.equal(errorMessage({ error: 'model "x" not found' }, 'Not Found'), 'model "x" not found');
    assert.equal(errorMessage({ error: { message: 'backend down', type: 'server_error' } }, 'x'), 'backend down');
    assert.equal(errorMessage({ message: 'Slurm unavailable', reason: null }, 'x'), 'Slurm unavailable');
    assert.equal(errorMessage('plain text', 'x'), 'plain text');
    assert.equal(errorMessage('<html><body>502</body></html>', 'Bad Gateway'), 'Bad Gateway');
    assert.equal(errorMessage({}, 'Bad Gateway'), 'Bad Gateway');
    assert.equal(errorMessage(null, 'Bad Gateway'), 'Bad Gateway');
  });
  it('says what the user sees', () => {
    assert.equal(describeError(403, 'Forbidden'), 'Not authorised');
    assert.equal(describeError(401, 'Unauthorized'), 'Not authorised');
    assert.equal(
      describeError(403, 'only admins can stop the backend'),
      'Not authorised: only admins can stop the backend'
    );
    assert.equal(describeError(503, 'Slurm unavailable'), 'Slurm unavailable');
    assert.equal(describeError(502, 'backend down'), 'backend down');
    assert.equal(describeError(404, 'no such route'), 'no such route (HTTP 404)');
  });
});

describe('snippets', () => {
  it('writes a magic cell with a prompt', () => {
    assert.equal(
      snippet('magic', 'smollm2:135m'),
      '%load_ext jupyter_llm_af\n%llm -m smollm2:135m Why is the sky blue?'
    );
  });
  it('writes client calls through the jupyter_llm_af helpers (URL and token from the kernel environment)', () => {
    const openai = snippet('openai', 'smollm2:135m');
    assert.match(openai, /from jupyter_llm_af import openai_client/);
    assert.match(openai, /client\.chat\.completions\.create\(model="smollm2:135m", messages=\[/);
    const ollama = snippet('ollama', 'smollm2:135m');
    assert.match(ollama, /from jupyter_llm_af import ollama_client/);
    assert.match(ollama, /client\.chat\(model="smollm2:135m", messages=\[/);
    for (const text of [openai, ollama]) {
      assert.doesNotMatch(text, /token|http/i);
    }
  });
});
