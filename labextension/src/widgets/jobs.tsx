import * as React from 'react';

import { IPoolView, jobLine, poolDetails, poolJobsText, poolViews } from '../format';
import type { IBackendState, IJob } from '../tokens';

/** One job: its id, then state, node, time left, loaded models, requests in flight, role. */
function JobLine({ job, now }: { job: IJob; now: Date }): JSX.Element {
  const role = job.role || 'current';
  return (
    <li
      className={`jp-LLMPanel-job jp-mod-${role}${job.ready ? ' jp-mod-ready' : ''}`}
      data-testid="llm-pool-job"
      data-job={job.id}
      data-role={role}
    >
      <span className="jp-LLMPanel-dot" aria-hidden="true" />
      <span className="jp-LLMPanel-jobId">{job.id}</span> {jobLine(job, now).join(' · ')}
    </li>
  );
}

/** A pool: its name and job count, what its jobs get, the server's sentence on it, one line per job. */
function PoolBlock({ view, now }: { view: IPoolView; now: Date }): JSX.Element {
  const { pool, jobs } = view;
  const details = pool ? poolDetails(pool) : '';
  return (
    <li className="jp-LLMPanel-item" data-testid="llm-pool" data-pool={view.name} data-state={pool?.state ?? ''}>
      <div className="jp-LLMPanel-itemMain">
        <span className="jp-LLMPanel-name">{view.name}</span>
        {pool && (
          <span className="jp-LLMPanel-badge" data-testid="llm-pool-count">
            {poolJobsText(pool)}
          </span>
        )}
        {details && (
          <div className="jp-LLMPanel-subtle" data-testid="llm-pool-details">
            {details}
          </div>
        )}
        {pool?.message && (
          <div
            className={`jp-LLMPanel-state jp-LLMPanel-poolState jp-mod-${pool.state}`}
            data-testid="llm-pool-message"
          >
            <span className="jp-LLMPanel-dot" aria-hidden="true" />
            <span>{pool.message}</span>
          </div>
        )}
        {jobs.length > 0 && (
          <ul className="jp-LLMPanel-list jp-LLMPanel-jobs">
            {jobs.map(job => (
              <JobLine key={job.id} job={job} now={now} />
            ))}
          </ul>
        )}
      </div>
    </li>
  );
}

/** Every Slurm job of every pool, for a service with several jobs or pools; nothing for a one-job service. */
export function JobsSection({ state }: { state: IBackendState }): JSX.Element | null {
  const views = poolViews(state);
  if (!views) {
    return null;
  }
  const now = new Date();
  return (
    <section className="jp-LLMPanel-section" data-testid="llm-jobs">
      <h3 className="jp-LLMPanel-heading">GPU jobs</h3>
      <ul className="jp-LLMPanel-list">
        {views.map(view => (
          <PoolBlock key={view.name} view={view} now={now} />
        ))}
      </ul>
    </section>
  );
}
