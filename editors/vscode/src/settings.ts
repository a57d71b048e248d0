/**
 * Pure helpers for the extension's settings: which keys the server understands, the
 * payload sent to it, the command that starts it, and where a toggle is written.
 *
 * No `vscode` import here, so that `node --test` can load this module directly.
 */

/** The configuration section shared by the extension and the server. */
export const SECTION = 'swiftguard';

/** VS Code language ids whose documents are sent to the server (and activate the extension). */
export const LANGUAGES = [
  'python',
  'javascript',
  'javascriptreact',
  'typescript',
  'typescriptreact',
  'go',
  'java',
  'c',
  'cpp',
  'rust',
] as const;

/**
 * The keys the server validates (lsp_server/settings.py, camelCase). Every other key
 * under `swiftguard.*` belongs to the client and must not reach the server, which
 * reports unknown keys as warnings.
 */
export const SERVER_KEYS = [
  'model',
  'device',
  'dtype',
  'maxNewTokens',
  'contextTokens',
  'enable',
  'logLevel',
  'trustRemoteCode',
  'speculation',
  'selfDraft',
  'generalCorpus',
  'genguard',
] as const;

export type ServerKey = (typeof SERVER_KEYS)[number];
export type ServerSettings = Partial<Record<ServerKey, unknown>>;

/** Reads one key of the `swiftguard` section (e.g. `WorkspaceConfiguration.get`). */
export type ConfigReader = (key: string) => unknown;

/**
 * The server's settings from the editor's configuration: only server keys, only keys
 * that have a value. `false`, `0` and `''` are real values and are kept (an empty model
 * means the embedded default model).
 */
export function serverSettings(read: ConfigReader): ServerSettings {
  const result: ServerSettings = {};
  for (const key of SERVER_KEYS) {
    const value = read(key);
    if (value !== undefined && value !== null) {
      result[key] = value;
    }
  }
  return result;
}

/** How the server process is started, and which setting chose that. */
export interface ServerCommand {
  command: string;
  args: string[];
  source: 'serverCommand' | 'pythonPath' | 'default';
}

/** The server command: `serverCommand`, else `<pythonPath> -m lsp_server serve`, else `swiftguard serve`. */
export function resolveServerCommand(serverCommand: unknown, pythonPath: unknown): ServerCommand {
  if (Array.isArray(serverCommand)) {
    const parts = serverCommand.filter((part): part is string => typeof part === 'string');
    const [command, ...args] = parts;
    if (command !== undefined && command.trim() !== '') {
      return { command: command.trim(), args, source: 'serverCommand' };
    }
  }
  if (typeof pythonPath === 'string' && pythonPath.trim() !== '') {
    return { command: pythonPath.trim(), args: ['-m', 'lsp_server', 'serve'], source: 'pythonPath' };
  }
  return { command: 'swiftguard', args: ['serve'], source: 'default' };
}

/** The command line as a user would type it, for messages. */
export function formatCommand(command: ServerCommand): string {
  const quote = (part: string): string => (/[\s"']/.test(part) ? JSON.stringify(part) : part);
  return [command.command, ...command.args].map(quote).join(' ');
}

/** The message shown when the server's executable cannot be found. */
export function missingCommandMessage(command: ServerCommand): string {
  const line = formatCommand(command);
  switch (command.source) {
    case 'serverCommand':
      return `Swiftguard: cannot start the server: "${command.command}" (from swiftguard.serverCommand) was not found or is not executable.`;
    case 'pythonPath':
      return `Swiftguard: cannot start the server: the Python interpreter "${command.command}" (from swiftguard.pythonPath) was not found or is not executable.`;
    default:
      return (
        `Swiftguard: cannot start the server: "${line}" failed because "swiftguard" is not on PATH. ` +
        'Install it (pip install -e <swiftguard checkout>) or set swiftguard.pythonPath to the Python that has it.'
      );
  }
}

/** What `WorkspaceConfiguration.inspect` reports for one key (the parts we use). */
export interface InspectedValue<T> {
  globalValue?: T;
  workspaceValue?: T;
  workspaceFolderValue?: T;
}

export type ConfigTarget = 'global' | 'workspace' | 'workspaceFolder';

/**
 * Where a toggled value has to be written to take effect: the most specific scope that
 * already sets it (writing to user settings would be shadowed by a workspace value).
 */
export function toggleTarget<T>(inspected: InspectedValue<T> | undefined): ConfigTarget {
  if (inspected?.workspaceFolderValue !== undefined) {
    return 'workspaceFolder';
  }
  if (inspected?.workspaceValue !== undefined) {
    return 'workspace';
  }
  return 'global';
}
