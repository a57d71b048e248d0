/** How many crashes the client forgives before it stops restarting the server. */

export class RestartBudget {
  private crashes: number[] = [];

  /** `maxRestarts` restarts are allowed within any `windowMs`. */
  constructor(
    readonly maxRestarts = 3,
    readonly windowMs = 3 * 60 * 1000,
  ) {}

  /** Record a crash at `now`; true when the server may be restarted once more. */
  recordCrash(now: number = Date.now()): boolean {
    this.crashes = this.crashes.filter((time) => now - time < this.windowMs);
    this.crashes.push(now);
    return this.crashes.length <= this.maxRestarts;
  }

  /** Crashes within the window, counting the last one. */
  get recentCrashes(): number {
    return this.crashes.length;
  }

  reset(): void {
    this.crashes = [];
  }
}
