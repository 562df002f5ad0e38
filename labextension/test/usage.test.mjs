// Unit tests of the usage chart helpers of src/format.ts (compiled lib/format.js), by `jlpm test`.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  dayLabel,
  formatCount,
  niceCeil,
  queueHistoryFacts,
  sparkPoints,
  usageBars,
  usageText
} from '../lib/format.js';

const day = (date, requests, prompt, completion) => ({
  date,
  requests,
  errors: 0,
  prompt_tokens: prompt,
  completion_tokens: completion,
  queue_wait_s: 0,
  backend_s: 0
});

// 2025-11-19 (a Wednesday) to 2025-11-25 (a Tuesday), as usage?days=7 answers them
const WEEK = [
  day('2025-11-19', 0, 0, 0),
  day('2025-11-20', 2, 300, 100),
  day('2025-11-21', 0, 0, 0),
  day('2025-11-22', 1, 1, 0),
  day('2025-11-23', 0, 0, 0),
  day('2025-11-24', 5, 1200, 300),
  day('2025-11-25', 3, 600, 200)
];

describe('formatCount', () => {
  it('shortens large counts', () => {
    assert.equal(formatCount(0), '0');
    assert.equal(formatCount(950), '950');
    assert.equal(formatCount(1234), '1.2k');
    assert.equal(formatCount(9_960), '10k');
    assert.equal(formatCount(56_700), '57k');
    assert.equal(formatCount(3_400_000), '3.4M');
    assert.equal(formatCount(-1), '?');
  });
});

describe('niceCeil', () => {
  it('rounds the top of the scale up to 1, 2 or 5 times a power of ten', () => {
    assert.equal(niceCeil(1500), 2000);
    assert.equal(niceCeil(2000), 2000);
    assert.equal(niceCeil(2001), 5000);
    assert.equal(niceCeil(7), 10);
    assert.equal(niceCeil(1), 1);
    assert.equal(niceCeil(0.3), 1);
  });
  it('is 0 without data', () => {
    assert.equal(niceCeil(0), 0);
    assert.equal(niceCeil(NaN), 0);
  });
});

describe('dayLabel', () => {
  it('writes the weekday of a service day, whatever the time zone', () => {
    assert.equal(dayLabel('2025-11-25'), 'Tue');
    assert.equal(dayLabel('2025-11-23'), 'Sun');
    assert.equal(dayLabel('soon'), 'soon');
  });
});

describe('usageText', () => {
  it('counts requests and tokens, with the split and failures', () => {
    assert.equal(usageText(WEEK[6]), '3 requests, 800 tokens (600 prompt + 200 completion)');
    assert.equal(usageText({ ...WEEK[3], errors: 1 }), '1 request, 1 failed, 1 token (1 prompt + 0 completion)');
    assert.equal(usageText(WEEK[0]), '0 requests, 0 tokens');
    assert.equal(usageText(day('x', 1, 0, 0)), '1 request, 0 tokens');
  });
});

describe('usageBars', () => {
  it('scales stacked bars to the top of the scale', () => {
    const { bars, max } = usageBars(WEEK, 210, 50);
    assert.equal(max, 2000);
    assert.equal(bars.length, 7);
    assert.deepEqual(
      bars.map(b => b.label),
      ['Wed', 'Thu', 'Fri', 'Sat', 'Sun', 'Mon', 'Tue']
    );
    // 1500 of 2000 tokens: 37.5 units, 1200 of them prompt
    assert.equal(bars[5].promptHeight + bars[5].completionHeight, 37.5);
    assert.equal(bars[5].promptHeight, 30);
    assert.equal(bars[5].completionHeight, 7.5);
    // one slot of 30 per day, the gap split on both sides
    assert.equal(bars[1].x, 32);
    assert.equal(bars[1].width, 26);
    assert.match(bars[6].title, /^Tue 2025-11-25: 3 requests, 800 tokens/);
  });
  it('keeps a tiny day visible and empty days flat', () => {
    const { bars } = usageBars(WEEK, 210, 50);
    assert.equal(bars[3].promptHeight + bars[3].completionHeight, 1);
    assert.equal(bars[0].promptHeight, 0);
    assert.equal(bars[0].completionHeight, 0);
  });
  it('draws nothing without tokens or days', () => {
    const empty = usageBars([day('2025-11-25', 4, 0, 0)], 210, 50);
    assert.equal(empty.max, 0);
    assert.equal(empty.bars[0].promptHeight + empty.bars[0].completionHeight, 0);
    assert.deepEqual(usageBars([], 210, 50), { bars: [], max: 0 });
  });
});

describe('sparkPoints', () => {
  it('maps values across the width, 0 at the bottom', () => {
    assert.equal(sparkPoints([0, 2, 1], 100, 40, 2), '0,40 50,0 100,20');
    // values above the scale stay inside the drawing
    assert.equal(sparkPoints([0, 5], 10, 40, 2), '0,40 10,0');
  });
  it('draws one value as a flat line and none as nothing', () => {
    assert.equal(sparkPoints([1], 100, 40, 2), '0,20 100,20');
    assert.equal(sparkPoints([], 100, 40, 2), '');
  });
});

describe('queueHistoryFacts', () => {
  // 4 slots of 30 s from a local 09:28:00
  const start = new Date(2025, 10, 25, 9, 28, 0).getTime() / 1000;
  it('gives the scale, the clock at both ends and the peaks', () => {
    const facts = queueHistoryFacts({ start, step_s: 30, waiting: [0, 3, 1, 0], running: [1, 1, 2, 0] });
    assert.deepEqual(facts, { max: 3, from: '09:28', to: '09:30', text: 'Peak 2 running, 3 waiting' });
  });
  it('says so when the queue was empty all hour', () => {
    const facts = queueHistoryFacts({ start, step_s: 30, waiting: [0, 0], running: [0, 0] });
    assert.equal(facts.max, 1);
    assert.equal(facts.text, 'No requests in the last hour.');
  });
  it('copes with an empty history', () => {
    const facts = queueHistoryFacts({ start, step_s: 30, waiting: [], running: [] });
    assert.equal(facts.max, 1);
    assert.equal(facts.from, '09:28');
  });
});
