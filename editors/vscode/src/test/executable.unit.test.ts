import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { findExecutable } from '../executable';
import { RestartBudget } from '../restartBudget';

describe('findExecutable', { skip: process.platform === 'win32' }, () => {
  let dir = '';

  before(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'swiftguard-exe-'));
    fs.writeFileSync(path.join(dir, 'swiftguard'), '#!/bin/sh\n', { mode: 0o755 });
    fs.writeFileSync(path.join(dir, 'notes.txt'), 'not a program\n', { mode: 0o644 });
    fs.mkdirSync(path.join(dir, 'folder'));
  });

  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('finds a bare name on PATH', () => {
    const env = { PATH: ['/nonexistent', dir].join(':') };
    assert.equal(findExecutable('swiftguard', env, 'linux'), path.join(dir, 'swiftguard'));
    assert.equal(findExecutable('swiftguard', { PATH: '/nonexistent' }, 'linux'), undefined);
  });

  it('checks paths directly, relative to cwd', () => {
    assert.equal(findExecutable(path.join(dir, 'swiftguard'), { PATH: '' }, 'linux'), path.join(dir, 'swiftguard'));
    assert.equal(findExecutable('./swiftguard', { PATH: '' }, 'linux', dir), path.join(dir, 'swiftguard'));
  });

  it('rejects files that are not executable, folders and missing files', () => {
    const env = { PATH: dir };
    assert.equal(findExecutable('notes.txt', env, 'linux'), undefined);
    assert.equal(findExecutable('folder', env, 'linux'), undefined);
    assert.equal(findExecutable(path.join(dir, 'missing'), env, 'linux'), undefined);
  });
});

describe('RestartBudget', () => {
  it('allows a few restarts in the window, then gives up', () => {
    const budget = new RestartBudget(2, 1000);
    assert.equal(budget.recordCrash(0), true);
    assert.equal(budget.recordCrash(100), true);
    assert.equal(budget.recordCrash(200), false);
    assert.equal(budget.recentCrashes, 3);
  });

  it('forgets crashes older than the window', () => {
    const budget = new RestartBudget(1, 1000);
    assert.equal(budget.recordCrash(0), true);
    assert.equal(budget.recordCrash(1500), true);
    assert.equal(budget.recentCrashes, 1);
    budget.reset();
    assert.equal(budget.recentCrashes, 0);
  });
});
