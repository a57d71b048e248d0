/**
 * The server's `swiftguard.status` answer, parsed defensively, and what the status bar
 * shows for it. Pure: no `vscode` import.
 */

export type EngineState = 'loading' | 'ready' | 'error' | 'disabled';

export interface LastCompletion {
  newTokens: number;
  seconds: number;
  tokensPerSecond: number;
  source: string;
  /** Speed over plain greedy decoding on this device (speculation on), when known. */
  speedup?: number;
}

export interface ServerStatus {
  version: string;
  state: EngineState;
  model?: string;
  device?: string;
  dtype?: string;
  error?: string;
  lastCompletion?: LastCompletion;
}

const STATES: readonly EngineState[] = ['loading', 'ready', 'error', 'disabled'];

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function optionalString(value: unknown): string | undefined {
  return typeof value === 'string' && value !== '' ? value : undefined;
}

function finiteNumber(value: unknown): number {
  return typeof value === 'number' && Number.isFinite(value) ? value : 0;
}

/** The status JSON as the server sends it (lsp_server/server.py `status`), or undefined. */
export function parseStatus(raw: unknown): ServerStatus | undefined {
  if (!isRecord(raw) || !isRecord(raw.engine)) {
    return undefined;
  }
  const state = raw.engine.state;
  if (typeof state !== 'string' || !STATES.includes(state as EngineState)) {
    return undefined;
  }
  const status: ServerStatus = {
    version: typeof raw.version === 'string' ? raw.version : '',
    state: state as EngineState,
    model: optionalString(raw.engine.model),
    device: optionalString(raw.engine.device),
    dtype: optionalString(raw.engine.dtype),
    error: optionalString(raw.engine.error),
  };
  const last = raw.last_completion;
  if (isRecord(last)) {
    status.lastCompletion = {
      newTokens: finiteNumber(last.new_tokens),
      seconds: finiteNumber(last.seconds),
      tokensPerSecond: finiteNumber(last.tokens_per_second),
      source: typeof last.source === 'string' ? last.source : 'model',
    };
    if (typeof last.speedup_estimate === 'number' && last.speedup_estimate > 0) {
      status.lastCompletion.speedup = last.speedup_estimate;
    }
  }
  return status;
}

/** What the client itself knows, beyond the server's status. */
export type ClientPhase = 'starting' | 'running' | 'generating' | 'stopped' | 'failed';

export interface StatusView {
  text: string;
  tooltip: string;
  severity: 'normal' | 'warning' | 'error';
}

/** "42 tok/s, 2.1x" for the last model completion; typed-ahead answers have no speed worth showing. */
export function formatSpeed(last: LastCompletion | undefined): string | undefined {
  if (last === undefined || last.source !== 'model' || last.tokensPerSecond <= 0) {
    return undefined;
  }
  const rate = last.tokensPerSecond;
  const speed = `${rate >= 100 ? Math.round(rate) : rate.toFixed(1)} tok/s`;
  return last.speedup === undefined ? speed : `${speed}, ${last.speedup.toFixed(1)}x`;
}

function describeModel(status: ServerStatus): string {
  const parts = [status.model ?? 'model', status.device && `on ${status.device}`, status.dtype && `(${status.dtype})`];
  return parts.filter(Boolean).join(' ');
}

/** The status bar's text (with a codicon), tooltip and colour for a phase and status. */
export function describeStatus(phase: ClientPhase, status: ServerStatus | undefined, detail?: string): StatusView {
  const click = 'Click for the full status.';
  if (phase === 'failed') {
    return { text: '$(error) Swiftguard', tooltip: `Swiftguard server is not running: ${detail ?? 'see the log'}.`, severity: 'error' };
  }
  if (phase === 'stopped') {
    return { text: '$(debug-stop) Swiftguard', tooltip: 'Swiftguard server is stopped.', severity: 'warning' };
  }
  if (phase === 'starting' || status === undefined) {
    return { text: '$(sync~spin) Swiftguard', tooltip: 'Swiftguard: starting the server…', severity: 'normal' };
  }
  const speed = formatSpeed(status.lastCompletion);
  switch (status.state) {
    case 'loading':
      return { text: '$(sync~spin) Swiftguard', tooltip: `Swiftguard: loading the model… ${click}`, severity: 'normal' };
    case 'error':
      return {
        text: '$(error) Swiftguard',
        tooltip: `Swiftguard could not load the model: ${status.error ?? 'unknown error'}. ${click}`,
        severity: 'error',
      };
    case 'disabled':
      return { text: '$(circle-slash) Swiftguard', tooltip: `Swiftguard completions are turned off (swiftguard.enable). ${click}`, severity: 'warning' };
    case 'ready': {
      const last = status.lastCompletion;
      const lastLine =
        last === undefined
          ? 'No completion yet.'
          : `Last completion: ${last.newTokens} tokens in ${last.seconds.toFixed(2)} s` +
            (speed !== undefined ? ` (${speed})` : ` (${last.source})`) + '.';
      const tooltip = `Swiftguard ready: ${describeModel(status)}. ${lastLine} ${click}`;
      if (phase === 'generating') {
        return { text: '$(loading~spin) Swiftguard', tooltip, severity: 'normal' };
      }
      return { text: speed === undefined ? '$(check) Swiftguard' : `$(check) Swiftguard ${speed}`, tooltip, severity: 'normal' };
    }
  }
}

/** One line for a notification: state, model and the last completion's speed. */
export function summarizeStatus(status: ServerStatus): string {
  const speed = formatSpeed(status.lastCompletion);
  const head = `Swiftguard ${status.version}: ${status.state}`;
  if (status.state === 'error') {
    return `${head}: ${status.error ?? 'unknown error'}`;
  }
  if (status.state !== 'ready') {
    return head;
  }
  return `${head}, ${describeModel(status)}` + (speed !== undefined ? `, last completion ${speed}` : '');
}
