import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { LabIcon } from '@jupyterlab/ui-components';

import llmIconSvg from '../style/icons/llm.svg';
import { CATEGORY, CommandIDs, addCommands } from './commands';
import { LLMModel } from './model';
import { LLMPanel, PANEL_ID } from './widgets/panel';

/** The sidebar tab's icon. */
export const llmIcon = new LabIcon({ name: 'jupyter-llm-af:llm', svgstr: llmIconSvg });

/** The sidebar panel of the shared LLM service. */
const plugin: JupyterFrontEndPlugin<void> = {
  id: 'jupyter-llm-af:plugin',
  description: 'A sidebar showing the shared LLM service: backend state, models, queue.',
  autoStart: true,
  optional: [ICommandPalette, ILayoutRestorer],
  activate: (app: JupyterFrontEnd, palette: ICommandPalette | null, restorer: ILayoutRestorer | null) => {
    const model = new LLMModel();
    const panel = new LLMPanel(model, app.commands);
    panel.title.icon = llmIcon;
    app.shell.add(panel, 'left', { rank: 1000 });
    restorer?.add(panel, PANEL_ID);

    addCommands(app, model, panel);
    if (palette) {
      for (const command of [
        CommandIDs.showPanel,
        CommandIDs.refresh,
        CommandIDs.startBackend,
        CommandIDs.stopBackend
      ]) {
        palette.addItem({ command, category: CATEGORY });
      }
    }
  }
};

export default plugin;
