import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { describeStatus, formatSpeed, parseStatus, summarizeStatus } from '../status';

const READY = {
  version: '0.1.0',
  engine: { state: 'ready', model: 'tiny', device: 'cpu', dtype: 'float32', fim: true },
  settings: {},
  requests: { completed: 3 },
  last_completion: { new_tokens: 8, seconds: 0.25, tokens_per_second: 32.04, source: 'model' },
};

describe('parseStatus', () => {
  it('reads the server status', () => {
    assert.deepEqual(parseStatus(READY), {
      version: '0.1.0',
      state: 'ready',
      model: 'tiny',
      device: 'cpu',
      dtype: 'float32',
      error: undefined,
      lastCompletion: { newTokens: 8, seconds: 0.25, tokensPerSecond: 32.04, source: 'model' },
    });
  });

  it('rejects answers that are not a status', () => {
    for (const raw of [undefined, null, 'ready', [], {}, { engine: {} }, { engine: { state: 'exploded' } }]) {
      assert.equal(parseStatus(raw), undefined, JSON.stringify(raw));
    }
  });

  it('tolerates a missing last completion and odd numbers', () => {
    const status = parseStatus({ engine: { state: 'ready' }, last_completion: { tokens_per_second: 'fast' } });
    assert.equal(status?.lastCompletion?.tokensPerSecond, 0);
    assert.equal(parseStatus({ engine: { state: 'loading' }, last_completion: null })?.lastCompletion, undefined);
  });
});

describe('describeStatus', () => {
  const ready = parseStatus(READY);

  it('shows the last speed when ready', () => {
    const view = describeStatus('running', ready);
    assert.equal(view.text, '$(check) Swiftguard 32.0 tok/s');
    assert.match(view.tooltip, /8 tokens in 0\.25 s \(32\.0 tok\/s\)/);
    assert.equal(view.severity, 'normal');
  });

  it('spins while generating and loading', () => {
    assert.equal(describeStatus('generating', ready).text, '$(loading~spin) Swiftguard');
    assert.equal(describeStatus('running', parseStatus({ engine: { state: 'loading' } })).text, '$(sync~spin) Swiftguard');
    assert.equal(describeStatus('starting', undefined).text, '$(sync~spin) Swiftguard');
  });

  it('reports errors with their reason', () => {
    const view = describeStatus('running', parseStatus({ engine: { state: 'error', error: 'model folder does not exist' } }));
    assert.equal(view.severity, 'error');
    assert.match(view.tooltip, /model folder does not exist/);
    const failed = describeStatus('failed', undefined, '"swiftguard" was not found');
    assert.equal(failed.severity, 'error');
    assert.match(failed.tooltip, /not found/);
  });

  it('shows disabled completions as a warning', () => {
    const view = describeStatus('running', parseStatus({ engine: { state: 'disabled' } }));
    assert.equal(view.severity, 'warning');
    assert.match(view.text, /circle-slash/);
  });
});

describe('formatSpeed and summarizeStatus', () => {
  it('formats speeds and skips typed-ahead answers', () => {
    assert.equal(formatSpeed({ newTokens: 10, seconds: 0.1, tokensPerSecond: 123.4, source: 'model' }), '123 tok/s');
    assert.equal(formatSpeed({ newTokens: 0, seconds: 0, tokensPerSecond: 0, source: 'model' }), undefined);
    assert.equal(formatSpeed({ newTokens: 9, seconds: 0.5, tokensPerSecond: 18, source: 'model', speedup: 2.04 }), '18.0 tok/s, 2.0x');
    assert.equal(formatSpeed({ newTokens: 4, seconds: 0.001, tokensPerSecond: 4000, source: 'typeahead' }), undefined);
  });

  it('summarizes ready and failed servers', () => {
    const ready = parseStatus(READY);
    assert.ok(ready);
    assert.equal(summarizeStatus(ready), 'Swiftguard 0.1.0: ready, tiny on cpu (float32), last completion 32.0 tok/s');
    const broken = parseStatus({ version: '0.1.0', engine: { state: 'error', error: 'boom' } });
    assert.ok(broken);
    assert.equal(summarizeStatus(broken), 'Swiftguard 0.1.0: error: boom');
  });
});
