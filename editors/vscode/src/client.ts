/**
 * The language client's life cycle: start `swiftguard serve`, keep the status bar in
 * step with the server, restart after a crash (a few times), explain failures.
 *
 * Inline completions themselves are vscode-languageclient's built-in feature (10.x):
 * VS Code shows the items and cancels stale requests; the middleware below only
 * observes them for the status bar and never inserts text.
 */

import * as vscode from 'vscode';
import {
  CloseAction,
  type CloseHandlerResult,
  DidChangeConfigurationNotification,
  ErrorAction,
  type ErrorHandlerResult,
  ExecuteCommandRequest,
  LanguageClient,
  type LanguageClientOptions,
  type Middleware,
  State,
} from 'vscode-languageclient/node';
import { findExecutable } from './executable';
import { RestartBudget } from './restartBudget';
import { formatCommand, LANGUAGES, missingCommandMessage, resolveServerCommand, SECTION, serverSettings, type ServerCommand, type ServerSettings } from './settings';
import { type ClientPhase, describeStatus, parseStatus, type ServerStatus } from './status';
import type { StatusBar } from './statusBar';

export const SERVER_STATUS_COMMAND = 'swiftguard.status';
const POLL_MS = 1000;
const GENERATING_DELAY_MS = 150;

/** The server's settings as configured now (only keys the server knows). */
export function currentServerSettings(): ServerSettings {
  const config = vscode.workspace.getConfiguration(SECTION);
  return serverSettings((key) => config.get(key));
}

function currentServerCommand(): ServerCommand {
  const config = vscode.workspace.getConfiguration(SECTION);
  return resolveServerCommand(config.get('serverCommand'), config.get('pythonPath'));
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export class SwiftguardClient implements vscode.Disposable {
  private client: LanguageClient | undefined;
  private phase: ClientPhase = 'stopped';
  private status: ServerStatus | undefined;
  private failure: string | undefined;
  private inFlight = 0;
  private generatingTimer: NodeJS.Timeout | undefined;
  private pollTimer: NodeJS.Timeout | undefined;
  private reachedRunning = false;
  private stopping = false;
  private readonly budget = new RestartBudget();

  constructor(
    readonly log: vscode.LogOutputChannel,
    private readonly bar: StatusBar,
  ) {
    this.render();
  }

  /** Start the server (no-op when running); failures are shown, never thrown. */
  async start(): Promise<void> {
    if (this.client !== undefined) {
      return;
    }
    const command = currentServerCommand();
    if (findExecutable(command.command) === undefined) {
      this.fail(`"${command.command}" was not found`);
      this.log.error(missingCommandMessage(command));
      void this.showError(missingCommandMessage(command), 'Open Settings', 'Show Log');
      return;
    }
    this.log.info(`Starting the server: ${formatCommand(command)}`);
    const client = new LanguageClient(
      'swiftguard',
      'Swiftguard',
      { command: command.command, args: command.args },
      this.clientOptions(),
    );
    client.onDidChangeState((event) => {
      if (event.newState === State.Running) {
        this.reachedRunning = true;
        this.phase = 'running';
        this.failure = undefined;
        this.watchStatus();
      }
      this.render();
    });
    this.client = client;
    this.stopping = false;
    this.reachedRunning = false;
    this.phase = 'starting';
    this.status = undefined;
    this.render();
    try {
      await client.start();
    } catch (error) {
      if (this.client === client && (this.phase as ClientPhase) !== 'failed') {
        const message = `Swiftguard: the server did not start (${errorText(error)}). Check that "${formatCommand(command)}" runs in a terminal.`;
        this.fail(errorText(error));
        void this.showError(message, 'Show Log', 'Open Settings');
      }
    }
  }

  /** Stop the server and forget the client. */
  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    this.stopPolling();
    if (client !== undefined) {
      this.stopping = true;
      try {
        if (client.isRunning()) {
          await client.stop();
        }
      } catch (error) {
        this.log.warn(`Stopping the server failed: ${errorText(error)}`);
      }
      await client.dispose().catch(() => undefined);
    }
    this.phase = 'stopped';
    this.status = undefined;
    this.render();
  }

  /** A fresh server process (and a fresh command line, should the settings have changed). */
  async restart(): Promise<void> {
    await this.stop();
    this.budget.reset();
    this.failure = undefined;
    await this.start();
  }

  /** The server's raw `swiftguard.status` answer, or undefined when it is not running. */
  async fetchRawStatus(): Promise<unknown> {
    const client = this.client;
    if (client === undefined || !client.isRunning()) {
      return undefined;
    }
    return client.sendRequest(ExecuteCommandRequest.type, { command: SERVER_STATUS_COMMAND, arguments: [] });
  }

  /** Ask the server for its status and update the status bar. */
  async refreshStatus(): Promise<ServerStatus | undefined> {
    try {
      const status = parseStatus(await this.fetchRawStatus());
      this.status = status;
      this.render();
      return status;
    } catch (error) {
      this.log.debug(`swiftguard.status failed: ${errorText(error)}`);
      return undefined;
    }
  }

  /** Poll the status while the model loads, until it is ready, failed or disabled. */
  watchStatus(): void {
    this.stopPolling();
    const tick = async (): Promise<void> => {
      const status = await this.refreshStatus();
      if (this.client !== undefined && (status === undefined || status.state === 'loading')) {
        this.pollTimer = setTimeout(() => void tick(), POLL_MS);
      }
    };
    this.pollTimer = setTimeout(() => void tick(), 0);
  }

  dispose(): void {
    void this.stop();
  }

  private stopPolling(): void {
    if (this.pollTimer !== undefined) {
      clearTimeout(this.pollTimer);
      this.pollTimer = undefined;
    }
  }

  private clientOptions(): LanguageClientOptions {
    return {
      documentSelector: LANGUAGES.flatMap((language) => [
        { scheme: 'file', language },
        { scheme: 'untitled', language },
      ]),
      outputChannel: this.log,
      initializationOptions: () => currentServerSettings(),
      synchronize: { configurationSection: SECTION },
      middleware: this.middleware(),
      errorHandler: {
        error: (_error, _message, count): ErrorHandlerResult => ({
          action: (count ?? 0) <= 3 ? ErrorAction.Continue : ErrorAction.Shutdown,
        }),
        closed: () => this.onClosed(),
      },
    };
  }

  private middleware(): Middleware {
    return {
      workspace: {
        // The 'swiftguard' section also holds client-only keys (serverCommand, trace...),
        // which the server would report as unknown: send only the server's keys.
        didChangeConfiguration: async () => {
          const client = this.client;
          if (client === undefined) {
            return;
          }
          await client.sendNotification(DidChangeConfigurationNotification.type, {
            settings: { [SECTION]: currentServerSettings() },
          });
          this.watchStatus();
        },
        configuration: (params, token, next) => {
          if (params.items.every((item) => item.section !== SECTION)) {
            return next(params, token);
          }
          return params.items.map((item) => (item.section === SECTION ? currentServerSettings() : null));
        },
      },
      provideInlineCompletionItems: async (document, position, context, token, next) => {
        this.beginRequest();
        try {
          return await next(document, position, context, token);
        } finally {
          this.endRequest(token.isCancellationRequested);
        }
      },
    };
  }

  private beginRequest(): void {
    this.inFlight += 1;
    if (this.generatingTimer === undefined) {
      this.generatingTimer = setTimeout(() => {
        this.generatingTimer = undefined;
        if (this.inFlight > 0 && this.phase === 'running') {
          this.phase = 'generating';
          this.render();
        }
      }, GENERATING_DELAY_MS);
    }
  }

  private endRequest(cancelled: boolean): void {
    this.inFlight = Math.max(0, this.inFlight - 1);
    if (this.inFlight > 0) {
      return;
    }
    if (this.generatingTimer !== undefined) {
      clearTimeout(this.generatingTimer);
      this.generatingTimer = undefined;
    }
    if (this.phase === 'generating') {
      this.phase = 'running';
    }
    if (cancelled) {
      this.render();
    } else {
      void this.refreshStatus();
    }
  }

  private onClosed(): CloseHandlerResult {
    this.stopPolling();
    this.status = undefined;
    if (this.stopping) {
      return { action: CloseAction.DoNotRestart, handled: true };
    }
    if (!this.reachedRunning) {
      const message =
        `Swiftguard: the server exited while starting. Check that "${formatCommand(currentServerCommand())}" ` +
        'runs in a terminal; its error output is in the log.';
      this.fail('the server exited while starting');
      void this.showError(message, 'Show Log', 'Open Settings');
      return { action: CloseAction.DoNotRestart, message, handled: true };
    }
    if (this.budget.recordCrash()) {
      const message = `Swiftguard: the server stopped unexpectedly; restarting it (${this.budget.recentCrashes}/${this.budget.maxRestarts}).`;
      this.phase = 'starting';
      this.reachedRunning = false;
      this.render();
      return { action: CloseAction.Restart, message, handled: true };
    }
    const message =
      `Swiftguard: the server crashed ${this.budget.recentCrashes} times in 3 minutes and will not be restarted. ` +
      'Its error output is in the log.';
    this.fail('the server crashed repeatedly');
    void this.showError(message, 'Show Log', 'Restart Server');
    return { action: CloseAction.DoNotRestart, message, handled: true };
  }

  private fail(reason: string): void {
    this.phase = 'failed';
    this.failure = reason;
    this.status = undefined;
    this.render();
  }

  private render(): void {
    this.bar.show(describeStatus(this.phase, this.status, this.failure));
  }

  private async showError(message: string, ...actions: string[]): Promise<void> {
    const choice = await vscode.window.showErrorMessage(message, ...actions);
    if (choice === 'Show Log') {
      this.log.show();
    } else if (choice === 'Open Settings') {
      await vscode.commands.executeCommand('workbench.action.openSettings', `@ext:swiftguard.swiftguard ${SECTION}`);
    } else if (choice === 'Restart Server') {
      await this.restart();
    }
  }
}
