import * as React from 'react';

import { formatCount, queueHistoryFacts, sparkPoints, usageBars, usageText } from '../format';
import type { IQueueHistory, IUsage, IUsageDay } from '../tokens';

// Chart geometry in SVG user units; CSS scales the whole drawing to the panel's width.
const WIDTH = 240;
const AXIS = 28; // left margin for the scale's labels
const BARS_HEIGHT = 56;
const LABELS = 14; // room for the weekday labels under the bars
const LINE_HEIGHT = 36;

/** Tokens per day as stacked bars (prompt below, completion above), with the scale's top value. */
function UsageChart({ days, today }: { days: IUsageDay[]; today: string }): JSX.Element {
  const { bars, max } = usageBars(days, WIDTH - AXIS, BARS_HEIGHT);
  const base = BARS_HEIGHT + 2;
  return (
    <svg
      className="jp-LLMPanel-chart"
      data-testid="llm-usage-chart"
      data-max={max}
      viewBox={`0 0 ${WIDTH} ${base + LABELS}`}
      role="img"
      aria-label={`Tokens per day, last ${days.length} days`}
    >
      <text className="jp-LLMPanel-axisLabel" x={AXIS - 4} y={10} textAnchor="end">
        {formatCount(max)}
      </text>
      <text className="jp-LLMPanel-axisLabel" x={AXIS - 4} y={base} textAnchor="end">
        0
      </text>
      <line className="jp-LLMPanel-gridLine" x1={AXIS} x2={WIDTH} y1={2} y2={2} />
      <line className="jp-LLMPanel-axisLine" x1={AXIS} x2={WIDTH} y1={base} y2={base} />
      {bars.map(bar => (
        <g key={bar.date} className={bar.date === today ? 'jp-mod-today' : undefined} data-date={bar.date}>
          <title>{bar.title}</title>
          {/* a transparent full-height box so that the tooltip shows over empty days too */}
          <rect className="jp-LLMPanel-barHit" x={AXIS + bar.x} y={2} width={bar.width} height={BARS_HEIGHT} />
          <rect
            className="jp-LLMPanel-bar jp-mod-prompt"
            x={AXIS + bar.x}
            y={base - bar.promptHeight}
            width={bar.width}
            height={bar.promptHeight}
          />
          <rect
            className="jp-LLMPanel-bar jp-mod-completion"
            x={AXIS + bar.x}
            y={base - bar.promptHeight - bar.completionHeight}
            width={bar.width}
            height={bar.completionHeight}
          />
          <text
            className="jp-LLMPanel-axisLabel"
            x={AXIS + bar.x + bar.width / 2}
            y={base + LABELS - 3}
            textAnchor="middle"
          >
            {bar.label}
          </text>
        </g>
      ))}
    </svg>
  );
}

/** Waiting and running requests over the last hour as two lines on one scale. */
function QueueSparkline({ history }: { history: IQueueHistory }): JSX.Element {
  const facts = queueHistoryFacts(history);
  const width = WIDTH - AXIS;
  const base = LINE_HEIGHT + 2;
  return (
    <>
      <svg
        className="jp-LLMPanel-chart"
        data-testid="llm-queue-history"
        data-max={facts.max}
        viewBox={`0 0 ${WIDTH} ${base + LABELS}`}
        role="img"
        aria-label={`Queue, last hour: ${facts.text}`}
      >
        <text className="jp-LLMPanel-axisLabel" x={AXIS - 4} y={10} textAnchor="end">
          {facts.max}
        </text>
        <text className="jp-LLMPanel-axisLabel" x={AXIS - 4} y={base} textAnchor="end">
          0
        </text>
        <line className="jp-LLMPanel-gridLine" x1={AXIS} x2={WIDTH} y1={2} y2={2} />
        <line className="jp-LLMPanel-axisLine" x1={AXIS} x2={WIDTH} y1={base} y2={base} />
        <g transform={`translate(${AXIS} 2)`}>
          <polyline
            className="jp-LLMPanel-line jp-mod-running"
            points={sparkPoints(history.running, width, LINE_HEIGHT, facts.max)}
          />
          <polyline
            className="jp-LLMPanel-line jp-mod-waiting"
            points={sparkPoints(history.waiting, width, LINE_HEIGHT, facts.max)}
          />
        </g>
        <text className="jp-LLMPanel-axisLabel" x={AXIS} y={base + LABELS - 3} textAnchor="start">
          {facts.from}
        </text>
        <text className="jp-LLMPanel-axisLabel" x={WIDTH} y={base + LABELS - 3} textAnchor="end">
          {facts.to}
        </text>
      </svg>
      <div className="jp-LLMPanel-legend jp-LLMPanel-subtle">
        <span className="jp-LLMPanel-swatch jp-mod-running" aria-hidden="true" />
        running
        <span className="jp-LLMPanel-swatch jp-mod-waiting" aria-hidden="true" />
        waiting
      </div>
      <div className="jp-LLMPanel-subtle" data-testid="llm-queue-history-text">
        {facts.text}
      </div>
    </>
  );
}

/** My requests and tokens today, a 7-day chart, and the queue depth over the last hour. */
export function UsageSection({ usage }: { usage: IUsage | null }): JSX.Element {
  const days = usage?.usage.days ?? [];
  const today = days.find(day => day.date === usage?.today);
  return (
    <section className="jp-LLMPanel-section" data-testid="llm-usage">
      <h3 className="jp-LLMPanel-heading">Usage</h3>
      {!usage ? (
        <div className="jp-LLMPanel-subtle">No usage figures yet.</div>
      ) : (
        <>
          <div className="jp-LLMPanel-subtle" data-testid="llm-usage-today">
            Today: {today ? usageText(today) : 'no requests'}
          </div>
          {days.length > 0 && (
            <>
              <UsageChart days={days} today={usage.today} />
              <div className="jp-LLMPanel-legend jp-LLMPanel-subtle">
                <span className="jp-LLMPanel-swatch jp-mod-prompt" aria-hidden="true" />
                prompt
                <span className="jp-LLMPanel-swatch jp-mod-completion" aria-hidden="true" />
                completion tokens per day
              </div>
              <div className="jp-LLMPanel-subtle" data-testid="llm-usage-week">
                Last {days.length} days: {usageText(usage.usage.totals)}
              </div>
            </>
          )}
          <h4 className="jp-LLMPanel-subheading">Queue, last hour</h4>
          <QueueSparkline history={usage.queue} />
        </>
      )}
    </section>
  );
}
