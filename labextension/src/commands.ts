import { JupyterFrontEnd } from '@jupyterlab/application';
import { Clipboard, Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { copyIcon, refreshIcon, runIcon, stopIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

import { SNIPPET_LABELS, SnippetKind, snippet } from './format';
import { LLMModel } from './model';
import { ACTIVE_STATES } from './tokens';

/** The commands of this extension. */
export namespace CommandIDs {
  export const showPanel = 'jupyter-llm-af:show-panel';
  export const refresh = 'jupyter-llm-af:refresh';
  export const copySnippet = 'jupyter-llm-af:copy-snippet';
  export const startBackend = 'jupyter-llm-af:start-backend';
  export const stopBackend = 'jupyter-llm-af:stop-backend';
}

/** The palette category. */
export const CATEGORY = 'LLM service';

/** A site URL cannot be started or stopped, nor can a service without a configuration. */
const controllable = (model: LLMModel): boolean =>
  !model.busy && model.state?.kind !== 'upstream' && model.state?.kind !== 'unconfigured';

const backendWord = (model: LLMModel): string => (model.state?.kind === 'slurm' ? 'GPU job' : 'backend');

/** Register the commands; the panel's buttons run them, the palette offers them. */
export function addCommands(app: JupyterFrontEnd, model: LLMModel, panel: Widget): void {
  const { commands, shell } = app;

  commands.addCommand(CommandIDs.showPanel, {
    label: 'Show LLM service panel',
    caption: 'Open the sidebar of the shared LLM service',
    execute: () => shell.activateById(panel.id)
  });

  commands.addCommand(CommandIDs.refresh, {
    label: 'Refresh LLM service state',
    icon: refreshIcon,
    execute: () => model.refresh()
  });

  commands.addCommand(CommandIDs.copySnippet, {
    label: args => `Copy ${SNIPPET_LABELS[args.kind as SnippetKind] ?? 'snippet'}`,
    caption: args => snippet(args.kind as SnippetKind, String(args.model)),
    icon: copyIcon,
    execute: args => {
      const kind = args.kind as SnippetKind;
      const text = snippet(kind, String(args.model));
      Clipboard.copyToSystem(text);
      Notification.success(`Copied the ${SNIPPET_LABELS[kind]} snippet for ${args.model}`, { autoClose: 2000 });
      return text;
    }
  });

  commands.addCommand(CommandIDs.startBackend, {
    label: () => `Start the LLM ${backendWord(model)}`,
    caption: 'Start the backend now instead of on the first request (admins)',
    icon: runIcon,
    isEnabled: () => model.isAdmin && controllable(model) && !ACTIVE_STATES.has(model.state?.state ?? ''),
    execute: () => model.control('start')
  });

  commands.addCommand(CommandIDs.stopBackend, {
    label: () => `Stop the LLM ${backendWord(model)}`,
    caption: 'Stop the backend for everyone (admins)',
    icon: stopIcon,
    isEnabled: () => model.isAdmin && controllable(model) && model.state?.state !== 'idle',
    execute: async () => {
      const what = backendWord(model);
      // a fleet's Stop lets every job go
      const jobs = model.state?.jobs?.length ?? 0;
      const result = await showDialog({
        title: jobs > 1 ? `Stop the ${jobs} GPU jobs?` : `Stop the ${what}?`,
        body: `Requests in flight fail, for all users. The next request starts a new ${what}.`,
        buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Stop' })]
      });
      if (result.button.accept) {
        await model.control('stop');
      }
    }
  });

  model.stateChanged.connect(() => {
    commands.notifyCommandChanged(CommandIDs.startBackend);
    commands.notifyCommandChanged(CommandIDs.stopBackend);
  });
}
