/** Entry point: the status bar, the commands and the language client. */

import * as vscode from 'vscode';
import { SwiftguardClient } from './client';
import { SECTION, summarizeOrRaw, toggleTarget } from './extensionHelpers';
import { StatusBar, SHOW_STATUS_COMMAND } from './statusBar';

let swiftguard: SwiftguardClient | undefined;

export async function activate(context: vscode.ExtensionContext): Promise<void> {
  const log = vscode.window.createOutputChannel('Swiftguard', { log: true });
  const bar = new StatusBar();
  const client = new SwiftguardClient(log, bar);
  swiftguard = client;
  context.subscriptions.push(log, bar, client);

  context.subscriptions.push(
    vscode.commands.registerCommand('swiftguard.restartServer', () => client.restart()),
    vscode.commands.registerCommand('swiftguard.showLog', () => log.show()),
    vscode.commands.registerCommand('swiftguard.toggleCompletions', toggleCompletions),
    vscode.commands.registerCommand(SHOW_STATUS_COMMAND, () => showStatus(client, log)),
    vscode.workspace.onDidChangeConfiguration(async (event) => {
      if (event.affectsConfiguration(`${SECTION}.serverCommand`) || event.affectsConfiguration(`${SECTION}.pythonPath`)) {
        log.info('The server command changed; restarting the server.');
        await client.restart();
      }
    }),
  );
  await client.start();
}

export async function deactivate(): Promise<void> {
  await swiftguard?.stop();
  swiftguard = undefined;
}

/** Flip `swiftguard.enable` where it is set; the client forwards it to the server. */
async function toggleCompletions(): Promise<void> {
  const config = vscode.workspace.getConfiguration(SECTION);
  const enabled = config.get<boolean>('enable', true);
  const target = {
    global: vscode.ConfigurationTarget.Global,
    workspace: vscode.ConfigurationTarget.Workspace,
    workspaceFolder: vscode.ConfigurationTarget.WorkspaceFolder,
  }[toggleTarget(config.inspect<boolean>('enable'))];
  await config.update('enable', !enabled, target);
  void vscode.window.showInformationMessage(`Swiftguard completions ${enabled ? 'turned off' : 'turned on'}.`);
}

/** Print the server's full `swiftguard.status` to the log and summarize it. */
async function showStatus(client: SwiftguardClient, log: vscode.LogOutputChannel): Promise<void> {
  let raw: unknown;
  try {
    raw = await client.fetchRawStatus();
  } catch (error) {
    raw = undefined;
    log.warn(`swiftguard.status failed: ${error instanceof Error ? error.message : String(error)}`);
  }
  if (raw === undefined) {
    const choice = await vscode.window.showWarningMessage('Swiftguard: the server is not running.', 'Restart Server', 'Show Log');
    if (choice === 'Restart Server') {
      await client.restart();
    } else if (choice === 'Show Log') {
      log.show();
    }
    return;
  }
  log.info(`swiftguard.status:\n${JSON.stringify(raw, null, 2)}`);
  log.show(true);
  void client.refreshStatus();
  void vscode.window.showInformationMessage(summarizeOrRaw(raw));
}
