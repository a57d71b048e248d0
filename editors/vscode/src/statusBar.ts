/** The status bar item: loading / ready (with the last speed) / generating / error. */

import * as vscode from 'vscode';
import type { StatusView } from './status';

export const SHOW_STATUS_COMMAND = 'swiftguard.showStatus';

export class StatusBar implements vscode.Disposable {
  private readonly item: vscode.StatusBarItem;

  constructor() {
    this.item = vscode.window.createStatusBarItem('swiftguard.status', vscode.StatusBarAlignment.Right, 100);
    this.item.name = 'Swiftguard';
    this.item.command = SHOW_STATUS_COMMAND;
    this.item.show();
  }

  show(view: StatusView): void {
    this.item.text = view.text;
    this.item.tooltip = view.tooltip;
    this.item.backgroundColor =
      view.severity === 'error'
        ? new vscode.ThemeColor('statusBarItem.errorBackground')
        : view.severity === 'warning'
          ? new vscode.ThemeColor('statusBarItem.warningBackground')
          : undefined;
  }

  dispose(): void {
    this.item.dispose();
  }
}
