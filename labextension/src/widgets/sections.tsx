import { LabIcon, copyIcon, runIcon, stopIcon } from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';
import { Menu } from '@lumino/widgets';
import * as React from 'react';

import { CommandIDs } from '../commands';
import {
  SnippetKind,
  gpuFit,
  jobFacts,
  kindLabel,
  modelDetails,
  modelNote,
  queueEntryText,
  queueTotalsText,
  runningText
} from '../format';
import type { IBackendState, IJob, IModelTag, IQueue, IQueueEntry, IRunningModel } from '../tokens';

const SNIPPET_KINDS: SnippetKind[] = ['magic', 'openai', 'ollama'];

/** Problems of the last refresh or action; nothing when all went well. */
export function ErrorBanner({ errors }: { errors: string[] }): JSX.Element | null {
  if (errors.length === 0) {
    return null;
  }
  return (
    <div className="jp-LLMPanel-error" data-testid="llm-error" role="alert">
      {errors.map(text => (
        <div key={text}>{text}</div>
      ))}
    </div>
  );
}

/** A button running a command, enabled as the command says. */
function CommandButton(props: {
  commands: CommandRegistry;
  id: string;
  icon: LabIcon;
  testid: string;
  label: string;
  /** Lab's button look: 'accept' (blue) or 'warn' (red). */
  look: 'accept' | 'warn';
}): JSX.Element {
  const { commands, id, icon } = props;
  return (
    <button
      className={`jp-mod-styled jp-mod-${props.look} jp-LLMPanel-control`}
      data-testid={props.testid}
      disabled={!commands.isEnabled(id)}
      title={commands.caption(id)}
      onClick={() => void commands.execute(id)}
    >
      <icon.react tag="span" className="jp-LLMPanel-buttonIcon" />
      {props.label}
    </button>
  );
}

/** A job's details as a small table. */
function JobFacts(props: { job: IJob; title: string; testid: string; now: Date }): JSX.Element {
  return (
    <dl className="jp-LLMPanel-facts" data-testid={props.testid} data-job={props.job.id}>
      <dt className="jp-LLMPanel-factsTitle">{props.title}</dt>
      <dd />
      {jobFacts(props.job, props.now).map(([label, value]) => (
        <React.Fragment key={label}>
          <dt>{label}</dt>
          <dd>{value}</dd>
        </React.Fragment>
      ))}
    </dl>
  );
}

/** The server's sentence on the backend, the jobs, and the admins' controls. */
export function StateSection(props: {
  state: IBackendState;
  commands: CommandRegistry;
  /** The jobs have a section of their own (several jobs or pools): no job details here. */
  jobsListed?: boolean;
}): JSX.Element {
  const { state, commands, jobsListed } = props;
  const now = new Date();
  const canControl = state.user?.admin && state.kind !== 'upstream' && state.kind !== 'unconfigured';
  return (
    <section className="jp-LLMPanel-section" data-testid="llm-status">
      <div
        className={`jp-LLMPanel-state jp-mod-${state.state}${state.serving ? ' jp-mod-serving' : ''}`}
        data-testid="llm-state"
        data-state={state.state}
        data-serving={state.serving ? 'true' : 'false'}
      >
        <span className="jp-LLMPanel-dot" aria-hidden="true" />
        <span>{state.message || state.state}</span>
      </div>
      <div className="jp-LLMPanel-subtle">
        {kindLabel(state.kind)} · {state.protocol === 'openai' ? 'OpenAI-compatible' : 'Ollama'} API
        {state.user?.admin && state.backend_url ? ` · ${state.backend_url}` : ''}
      </div>
      {!jobsListed && state.job && <JobFacts job={state.job} title="Current job" testid="llm-job" now={now} />}
      {!jobsListed && state.successor && (
        <JobFacts job={state.successor} title="Successor" testid="llm-successor" now={now} />
      )}
      {state.last_error && state.state !== 'failed' && state.state !== 'unknown' && (
        <div className="jp-LLMPanel-warning" data-testid="llm-last-error">
          Last error: {state.last_error}
        </div>
      )}
      {canControl && (
        <div className="jp-LLMPanel-controls" data-testid="llm-admin">
          <CommandButton
            commands={commands}
            id={CommandIDs.startBackend}
            icon={runIcon}
            look="accept"
            testid="llm-start"
            label="Start"
          />
          <CommandButton
            commands={commands}
            id={CommandIDs.stopBackend}
            icon={stopIcon}
            look="warn"
            testid="llm-stop"
            label="Stop"
          />
        </div>
      )}
    </section>
  );
}

/** Open the menu of snippets for `model` under `anchor`. */
function openSnippetMenu(commands: CommandRegistry, model: string, anchor: HTMLElement): void {
  const menu = new Menu({ commands });
  menu.addClass('jp-LLMPanel-snippetMenu');
  for (const kind of SNIPPET_KINDS) {
    menu.addItem({ command: CommandIDs.copySnippet, args: { model, kind } });
  }
  // dispose after the chosen command ran (the menu closes before it executes)
  menu.aboutToClose.connect(() => setTimeout(() => menu.dispose(), 0));
  const rect = anchor.getBoundingClientRect();
  menu.open(rect.left, rect.bottom);
}

/** The backend's models: size, family, quantization, GPU fit, and a copy-snippet menu. */
export function ModelsSection(props: {
  state: IBackendState;
  models: IModelTag[];
  running: IRunningModel[];
  commands: CommandRegistry;
}): JSX.Element {
  const { state, models, running, commands } = props;
  const loaded = new Set(running.map(m => m.name));
  return (
    <section className="jp-LLMPanel-section" data-testid="llm-models">
      <h3 className="jp-LLMPanel-heading">Models</h3>
      {state.gpu?.note && (
        <div className="jp-LLMPanel-subtle" data-testid="llm-gpu-note">
          {state.gpu.note}
        </div>
      )}
      {models.length === 0 ? (
        <div className="jp-LLMPanel-subtle">No models listed yet.</div>
      ) : (
        <ul className="jp-LLMPanel-list">
          {models.map(tag => {
            const fit = gpuFit(tag.name, state.gpu);
            const note = modelNote(tag, state.model_notes);
            return (
              <li key={tag.name} className="jp-LLMPanel-item" data-model={tag.name}>
                <div className="jp-LLMPanel-itemMain">
                  <span className="jp-LLMPanel-name">{tag.name}</span>
                  {tag.name === state.default_model && (
                    <span className="jp-LLMPanel-badge" data-testid="llm-default" title="Used when no model is named">
                      default
                    </span>
                  )}
                  {loaded.has(tag.name) && (
                    <span className="jp-LLMPanel-badge" data-testid="llm-loaded">
                      loaded
                    </span>
                  )}
                  <div className="jp-LLMPanel-subtle" data-testid="llm-model-details">
                    {modelDetails(tag)}
                  </div>
                  {fit && (
                    <div className={`jp-LLMPanel-fit ${fit.fits ? 'jp-mod-fits' : 'jp-mod-toolarge'}`}>{fit.text}</div>
                  )}
                  {note && (
                    <div className="jp-LLMPanel-subtle jp-LLMPanel-note" data-testid="llm-model-note">
                      {note}
                    </div>
                  )}
                </div>
                <button
                  className="jp-LLMPanel-iconButton"
                  data-testid="llm-copy"
                  title={`Copy a snippet using ${tag.name}`}
                  aria-label={`Copy a snippet using ${tag.name}`}
                  onClick={event => openSnippetMenu(commands, tag.name, event.currentTarget)}
                >
                  <copyIcon.react tag="span" />
                </button>
              </li>
            );
          })}
        </ul>
      )}
    </section>
  );
}

/** Models loaded in the backend now. */
export function RunningSection(props: { running: IRunningModel[]; serving: boolean }): JSX.Element {
  const { running, serving } = props;
  const now = new Date();
  return (
    <section className="jp-LLMPanel-section" data-testid="llm-running">
      <h3 className="jp-LLMPanel-heading">Loaded now</h3>
      {running.length === 0 ? (
        <div className="jp-LLMPanel-subtle">{serving ? 'No model loaded.' : 'None: the backend is not running.'}</div>
      ) : (
        <ul className="jp-LLMPanel-list">
          {running.map(model => (
            <li key={model.name} className="jp-LLMPanel-item" data-model={model.name}>
              <div className="jp-LLMPanel-itemMain">
                <span className="jp-LLMPanel-name">{model.name}</span>
                <div className="jp-LLMPanel-subtle">{runningText(model, now)}</div>
              </div>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

function EntryList({ entries, testid }: { entries: IQueueEntry[]; testid: string }): JSX.Element {
  return (
    <ul className="jp-LLMPanel-list" data-testid={testid}>
      {entries.map(entry => (
        <li key={entry.id} className={`jp-LLMPanel-entry jp-mod-${entry.state}`} data-state={entry.state}>
          {queueEntryText(entry)}
        </li>
      ))}
    </ul>
  );
}

/** My requests with their positions, the totals, and (for admins) the other users' requests. */
export function QueueSection(props: { queue: IQueue | null; state: IBackendState }): JSX.Element {
  const { queue, state } = props;
  const totals = queue?.totals ?? state.queue;
  const mine = queue?.mine ?? [];
  const others = (queue?.all ?? []).filter(entry => entry.user !== state.user?.name);
  return (
    <section className="jp-LLMPanel-section" data-testid="llm-queue">
      <h3 className="jp-LLMPanel-heading">Requests</h3>
      {totals && (
        <div className="jp-LLMPanel-subtle" data-testid="llm-queue-totals">
          {queueTotalsText(totals)}
        </div>
      )}
      {mine.length === 0 ? (
        <div className="jp-LLMPanel-subtle">None of mine in flight.</div>
      ) : (
        <EntryList entries={mine} testid="llm-queue-mine" />
      )}
      {others.length > 0 && (
        <>
          <h4 className="jp-LLMPanel-subheading">Other users</h4>
          <EntryList entries={others} testid="llm-queue-others" />
        </>
      )}
    </section>
  );
}
