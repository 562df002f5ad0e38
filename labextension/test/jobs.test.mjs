// Unit tests of the several-jobs helpers of src/format.ts (compiled lib/format.js), by `jlpm test`.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { jobLine, poolDetails, poolJobsText, poolViews } from '../lib/format.js';

// A fixed local "now": 2025-11-25 09:30 in the machine's own time zone.
const NOW = new Date(2025, 10, 25, 9, 30, 0);
const at = (h, m) => new Date(2025, 10, 25, h, m, 0).toISOString();

const running = (id, extra = {}) => ({
  id,
  state: 'RUNNING',
  reason: 'None',
  node: 'gpu017',
  started_at: at(9, 2),
  time_left_s: 11_520,
  time_limit_s: 14_400,
  ready: true,
  pool: 'default',
  role: 'current',
  models: ['gemma3:27b', 'all-minilm'],
  inflight: 2,
  ...extra
});

const pool = (name, extra = {}) => ({
  name,
  state: 'ready',
  message: `Pool ${name}: the server's sentence.`,
  jobs: 1,
  min_jobs: 0,
  max_jobs: 2,
  gres: 'gpu:a100:1',
  gpu_memory_gb: 40,
  models: [],
  ...extra
});

// what a one-job service reports (state.py's top-level fields)
const oneJob = (extra = {}) => ({
  kind: 'slurm',
  state: 'ready',
  message: 'Ready on node gpu017, 3 h 12 min left',
  job: running('1234'),
  serving: true,
  protocol: 'ollama',
  healthy: true,
  models: [],
  ...extra
});

describe('poolViews', () => {
  it('is null for a one-job service, whatever of jobs/pools it sends', () => {
    assert.equal(poolViews(oneJob()), null);
    assert.equal(poolViews(oneJob({ jobs: [running('1234')] })), null);
    assert.equal(poolViews(oneJob({ jobs: [], pools: [] })), null);
    assert.equal(poolViews(oneJob({ jobs: [running('1234')], pools: [pool('default', { max_jobs: 1 })] })), null);
    // a renewal of a one-job service: job and successor at the top level, as before
    assert.equal(poolViews(oneJob({ successor: running('1235', { role: 'successor' }) })), null);
  });

  it('groups every job under its pool, in the server order', () => {
    const a = running('1234');
    const b = running('1235', { node: 'gpu018', models: ['all-minilm'] });
    const c = running('1240', { pool: 'large', models: ['llama3.3:70b'] });
    const state = oneJob({
      jobs: [a, b, c],
      pools: [
        pool('default', { jobs: 2 }),
        pool('large', { max_jobs: 1, gres: 'gpu:a100:2', models: ['llama3.3:70b'] })
      ]
    });
    const views = poolViews(state);
    assert.deepEqual(
      views.map(v => [v.name, v.jobs.map(j => j.id)]),
      [
        ['default', ['1234', '1235']],
        ['large', ['1240']]
      ]
    );
    assert.equal(views[1].pool.gres, 'gpu:a100:2');
  });

  it('lists a fleet with one job, and pools without jobs', () => {
    const views = poolViews(oneJob({ jobs: [running('1234')], pools: [pool('default'), pool('large', { jobs: 0 })] }));
    assert.deepEqual(
      views.map(v => [v.name, v.jobs.length]),
      [
        ['default', 1],
        ['large', 0]
      ]
    );
    // one default pool that may grow to two jobs is a fleet too
    assert.equal(poolViews(oneJob({ jobs: [running('1234')], pools: [pool('default')] })).length, 1);
  });

  it('gives jobs of an unlisted pool a pool of their own; jobs without a pool are the default one', () => {
    const views = poolViews(
      oneJob({ jobs: [running('1', { pool: undefined }), running('2', { pool: 'large' })], pools: [pool('default')] })
    );
    assert.deepEqual(
      views.map(v => [v.name, v.pool === null, v.jobs.map(j => j.id)]),
      [
        ['default', false, ['1']],
        ['large', true, ['2']]
      ]
    );
  });
});

describe('pools', () => {
  it('counts jobs against the maximum', () => {
    assert.equal(poolJobsText(pool('default', { jobs: 1, max_jobs: 2 })), '1/2 jobs');
    assert.equal(poolJobsText(pool('default', { jobs: 2, min_jobs: 1, max_jobs: 4 })), '2/4 jobs');
    assert.equal(poolJobsText({ name: 'x', state: 'idle', jobs: 1 }), '1 job');
    assert.equal(poolJobsText({ name: 'x', state: 'idle', jobs: 0 }), '0 jobs');
  });
  it('says its minimum, and what its jobs get and serve', () => {
    assert.equal(
      poolDetails(pool('large', { gres: 'gpu:a100:2', gpu_memory_gb: 80, models: ['llama3.3:70b'] })),
      'gpu:a100:2 · 80 GB each · llama3.3:70b'
    );
    assert.equal(poolDetails(pool('default', { gpu_memory_gb: 0 })), 'gpu:a100:1');
    assert.equal(poolDetails(pool('default', { min_jobs: 1 })), 'min 1 · gpu:a100:1 · 40 GB each');
    assert.equal(poolDetails({ name: 'x', state: 'idle', jobs: 0 }), '');
  });
});

describe('jobLine', () => {
  it('a running job: state, node, time left, models, requests in flight', () => {
    assert.deepEqual(jobLine(running('1234'), NOW), [
      'running',
      'gpu017',
      '3 h 12 min left',
      'gemma3:27b, all-minilm',
      '2 in flight'
    ]);
  });
  it('a pending successor: the reason, the estimated start and its role', () => {
    const job = {
      id: '1235',
      state: 'PENDING',
      reason: 'Resources',
      node: null,
      estimated_start: at(10, 42),
      time_left_s: null,
      role: 'successor',
      models: [],
      inflight: 0
    };
    assert.deepEqual(jobLine(job, NOW), ['pending (Resources)', 'est. start 10:42', '0 in flight', 'successor']);
  });
  it('a draining job, and the fields an older service leaves out', () => {
    assert.deepEqual(jobLine(running('1', { role: 'draining', models: [], inflight: 1 }), NOW), [
      'running',
      'gpu017',
      '3 h 12 min left',
      '1 in flight',
      'draining'
    ]);
    assert.deepEqual(jobLine({ id: '9', state: 'PENDING', reason: 'None' }, NOW), ['pending']);
  });
});
