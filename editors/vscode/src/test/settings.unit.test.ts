import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import {
  formatCommand,
  LANGUAGES,
  missingCommandMessage,
  resolveServerCommand,
  SERVER_KEYS,
  serverSettings,
  toggleTarget,
} from '../settings';

interface Manifest {
  activationEvents: string[];
  contributes: {
    commands: { command: string }[];
    configuration: { properties: Record<string, { default?: unknown; scope?: string }> };
  };
}

const manifest = JSON.parse(readFileSync(path.join(__dirname, '..', '..', 'package.json'), 'utf8')) as Manifest;

describe('serverSettings', () => {
  it('keeps only the server keys, so client-only keys never reach the server', () => {
    const config: Record<string, unknown> = {
      model: '/models/tiny',
      maxNewTokens: 8,
      serverCommand: ['swiftguard', 'serve'],
      pythonPath: '/usr/bin/python3',
      trace: { server: 'verbose' },
    };
    assert.deepEqual(serverSettings((key) => config[key]), { model: '/models/tiny', maxNewTokens: 8 });
  });

  it('keeps false, zero and empty values', () => {
    const config: Record<string, unknown> = { enable: false, model: '', maxNewTokens: 0, trustRemoteCode: false };
    assert.deepEqual(serverSettings((key) => config[key]), {
      model: '',
      maxNewTokens: 0,
      enable: false,
      trustRemoteCode: false,
    });
  });
});

describe('resolveServerCommand', () => {
  it('prefers serverCommand', () => {
    assert.deepEqual(resolveServerCommand(['/venv/bin/swiftguard', 'serve'], '/usr/bin/python3'), {
      command: '/venv/bin/swiftguard',
      args: ['serve'],
      source: 'serverCommand',
    });
  });

  it('falls back to python -m lsp_server serve', () => {
    assert.deepEqual(resolveServerCommand([], ' /venv/bin/python '), {
      command: '/venv/bin/python',
      args: ['-m', 'lsp_server', 'serve'],
      source: 'pythonPath',
    });
  });

  it('defaults to swiftguard serve and ignores junk', () => {
    const expected = { command: 'swiftguard', args: ['serve'], source: 'default' };
    assert.deepEqual(resolveServerCommand(undefined, undefined), expected);
    assert.deepEqual(resolveServerCommand(['  '], ''), expected);
    assert.deepEqual(resolveServerCommand('swiftguard serve', 42), expected);
  });

  it('formats commands for messages', () => {
    assert.equal(formatCommand({ command: '/my venv/python', args: ['-m', 'lsp_server', 'serve'], source: 'pythonPath' }), '"/my venv/python" -m lsp_server serve');
    assert.match(missingCommandMessage(resolveServerCommand([], '/nope/python')), /swiftguard\.pythonPath/);
    assert.match(missingCommandMessage(resolveServerCommand(['/nope/sg'], '')), /swiftguard\.serverCommand/);
    assert.match(missingCommandMessage(resolveServerCommand([], '')), /not on PATH/);
  });
});

describe('toggleTarget', () => {
  it('writes where the value is set, most specific first', () => {
    assert.equal(toggleTarget(undefined), 'global');
    assert.equal(toggleTarget({ globalValue: false }), 'global');
    assert.equal(toggleTarget({ globalValue: true, workspaceValue: false }), 'workspace');
    assert.equal(toggleTarget({ workspaceValue: true, workspaceFolderValue: false }), 'workspaceFolder');
  });
});

describe('package.json', () => {
  const properties = manifest.contributes.configuration.properties;

  it('contributes every server setting', () => {
    for (const key of SERVER_KEYS) {
      assert.ok(`swiftguard.${key}` in properties, `swiftguard.${key} is not contributed`);
    }
  });

  it('keeps the settings that run code out of workspace control', () => {
    for (const key of ['serverCommand', 'pythonPath', 'trustRemoteCode']) {
      assert.equal(properties[`swiftguard.${key}`]?.scope, 'machine', key);
    }
  });

  it('activates on every language it serves and contributes its commands', () => {
    assert.deepEqual([...manifest.activationEvents].sort(), LANGUAGES.map((id) => `onLanguage:${id}`).sort());
    const commands = manifest.contributes.commands.map((command) => command.command).sort();
    assert.deepEqual(commands, ['swiftguard.restartServer', 'swiftguard.showLog', 'swiftguard.showStatus', 'swiftguard.toggleCompletions']);
    // The server registers swiftguard.status / swiftguard.restart through the client:
    // contributing the same ids would clash with those registrations.
    assert.ok(!commands.includes('swiftguard.status') && !commands.includes('swiftguard.restart'));
  });
});
