import { VDomRenderer, refreshIcon } from '@jupyterlab/ui-components';
import { CommandRegistry } from '@lumino/commands';
import * as React from 'react';

import { CommandIDs } from '../commands';
import { poolViews } from '../format';
import { LLMModel } from '../model';
import { JobsSection } from './jobs';
import { ErrorBanner, ModelsSection, QueueSection, RunningSection, StateSection } from './sections';
import { UsageSection } from './usage';

/** The id of the sidebar widget. */
export const PANEL_ID = 'jupyter-llm-af-panel';

/** The sidebar panel: re-renders on every model change; polls only while shown. */
export class LLMPanel extends VDomRenderer<LLMModel> {
  constructor(model: LLMModel, commands: CommandRegistry) {
    super(model);
    this._commands = commands;
    this.id = PANEL_ID;
    this.addClass('jp-LLMPanel');
    this.title.caption = 'LLM service';
  }

  protected onAfterShow(): void {
    this.model.visible = true;
  }

  protected onAfterHide(): void {
    this.model.visible = false;
  }

  protected render(): JSX.Element {
    const model = this.model;
    const state = model.state;
    const commands = this._commands;
    return (
      <div className="jp-LLMPanel-content">
        <header className="jp-LLMPanel-header">
          <h2 className="jp-LLMPanel-title">LLM service</h2>
          <button
            className="jp-LLMPanel-iconButton"
            data-testid="llm-refresh"
            title="Refresh"
            aria-label="Refresh"
            onClick={() => void commands.execute(CommandIDs.refresh)}
          >
            <refreshIcon.react tag="span" />
          </button>
        </header>
        <ErrorBanner errors={model.errors} />
        {state ? (
          <>
            <StateSection state={state} commands={commands} jobsListed={poolViews(state) !== null} />
            <JobsSection state={state} />
            <ModelsSection state={state} models={model.models} running={model.running} commands={commands} />
            <RunningSection running={model.running} serving={model.serving} />
            <QueueSection queue={model.queue} state={state} />
            <UsageSection usage={model.usage} />
          </>
        ) : (
          !model.loaded && <div className="jp-LLMPanel-subtle">Loading…</div>
        )}
      </div>
    );
  }

  private _commands: CommandRegistry;
}
