/** Finding an executable the way a process spawn would, to explain a missing command early. */

import * as fs from 'node:fs';
import * as path from 'node:path';

function isExecutableFile(file: string, platform: NodeJS.Platform): boolean {
  try {
    const stat = fs.statSync(file);
    if (!stat.isFile()) {
      return false;
    }
    if (platform === 'win32') {
      return true;
    }
    fs.accessSync(file, fs.constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

/**
 * The full path of `command` (a bare name looked up on PATH, or a path), or undefined
 * when it does not exist or is not executable. `cwd` resolves relative paths.
 */
export function findExecutable(
  command: string,
  env: NodeJS.ProcessEnv = process.env,
  platform: NodeJS.Platform = process.platform,
  cwd: string = process.cwd(),
): string | undefined {
  const extensions =
    platform === 'win32' ? ['', ...(env.PATHEXT ?? '.EXE;.CMD;.BAT;.COM').split(';').filter(Boolean)] : [''];
  const hasDirectory = command.includes('/') || (platform === 'win32' && command.includes('\\'));
  if (hasDirectory) {
    const base = path.resolve(cwd, command);
    return extensions.map((ext) => base + ext).find((file) => isExecutableFile(file, platform));
  }
  const pathValue = env.PATH ?? env.Path ?? '';
  const separator = platform === 'win32' ? ';' : ':';
  for (const dir of pathValue.split(separator)) {
    if (dir === '') {
      continue;
    }
    for (const ext of extensions) {
      const file = path.join(dir, command + ext);
      if (isExecutableFile(file, platform)) {
        return file;
      }
    }
  }
  return undefined;
}
