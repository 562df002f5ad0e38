import { VDomModel } from '@jupyterlab/ui-components';
import { Poll } from '@lumino/polling';

import { RequestError, requestAPI } from './request';
import type { IBackendState, IModelTag, IQueue, IRunningModel, IUsage } from './tokens';

/** Poll every 3 s; back off on errors up to once a minute. */
export const POLL_INTERVAL_MS = 3_000;
export const POLL_MAX_MS = 60_000;
/** The model list changes rarely: ask the backend for it at most this often (and when it comes up). */
export const TAGS_MAX_AGE_MS = 60_000;
/** Usage figures and the queue history move slowly: ask at most this often (and on an explicit refresh). */
export const USAGE_MAX_AGE_MS = 30_000;
/** The days of the usage chart. */
export const USAGE_DAYS = 7;

/** A control action of admins. */
export type ControlAction = 'start' | 'stop';

const messageOf = (error: unknown): string =>
  error instanceof RequestError ? error.display : String((error as Error)?.message ?? error);

/**
 * The service as the panel sees it, refreshed by a {@link Poll} while the panel is visible
 * and the browser tab is not hidden. `stateChanged` fires after every refresh.
 */
export class LLMModel extends VDomModel {
  constructor() {
    super();
    this._poll = new Poll({
      factory: () => this._refresh(),
      frequency: { interval: POLL_INTERVAL_MS, backoff: true, max: POLL_MAX_MS },
      name: 'jupyter-llm-af:LLMModel#poll',
      // no requests while the panel is closed; while open, pause when the browser tab is hidden
      standby: () => (this._visible ? 'when-hidden' : true)
    });
  }

  /** The last `backend/state`; null until the first answer. */
  get state(): IBackendState | null {
    return this._state;
  }

  /** The backend's models (`api/tags`, else the names the state lists), kept while the backend is down. */
  get models(): IModelTag[] {
    const known = new Set(this._tags.map(t => t.name));
    const extra = (this._state?.models ?? []).filter(name => !known.has(name)).map(name => ({ name }));
    return [...this._tags, ...extra];
  }

  /** Models loaded in the backend now (`api/ps`); empty while it is down. */
  get running(): IRunningModel[] {
    return this._running;
  }

  /** The admission queue (`queue`); null until the first answer. */
  get queue(): IQueue | null {
    return this._queue;
  }

  /** My usage of the last {@link USAGE_DAYS} days and the queue history (`usage`); the last answer is kept. */
  get usage(): IUsage | null {
    return this._usage;
  }

  /** What went wrong in the last refresh, one sentence per failed request. */
  get errors(): string[] {
    const errors = this._usageError ? [...this._errors, this._usageError] : this._errors;
    return this._actionError ? [...errors, this._actionError] : errors;
  }

  /** Whether an admin action is in flight. */
  get busy(): boolean {
    return this._busy;
  }

  /** The user may start and stop the backend. */
  get isAdmin(): boolean {
    return !!this._state?.user?.admin;
  }

  /** Whether the backend serves now, as the server says: `api/tags` and `api/ps` then start nothing. */
  get serving(): boolean {
    return this._state?.serving === true;
  }

  /** Whether a refresh has finished (successfully or not). */
  get loaded(): boolean {
    return this._loaded;
  }

  /** Set by the panel: polling runs only while it is shown. Showing it refreshes at once. */
  set visible(value: boolean) {
    if (this._visible === value) {
      return;
    }
    this._visible = value;
    if (value) {
      void this.refresh();
    }
  }

  /** Refresh now (outside the regular schedule). */
  async refresh(): Promise<void> {
    this._usageAsked = 0; // an explicit refresh (or showing the panel) reads the usage too
    await this._poll.refresh();
    await this._poll.tick;
  }

  /** Start or stop the backend (admins), then refresh; a refusal is shown in the panel. */
  async control(action: ControlAction): Promise<void> {
    this._busy = true;
    this._actionError = null;
    this.stateChanged.emit();
    try {
      await requestAPI(`backend/${action}`, { method: 'POST' });
    } catch (error) {
      this._actionError = `Could not ${action} the backend: ${messageOf(error)}`;
    } finally {
      this._busy = false;
      this.stateChanged.emit();
    }
    await this.refresh();
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._poll.dispose();
    super.dispose();
  }

  /** One poll tick. Rejects (so that the poll backs off) when the state itself cannot be read. */
  private async _refresh(): Promise<void> {
    const errors: string[] = [];
    try {
      this._state = await requestAPI<IBackendState>('backend/state');
    } catch (error) {
      this._errors = [messageOf(error)];
      this._loaded = true;
      this.stateChanged.emit();
      throw error;
    }
    const up = this.serving;
    const wantTags = up && (!this._tagsFetched || Date.now() - this._tagsFetched > TAGS_MAX_AGE_MS || !this._wasUp);
    this._wasUp = up;
    // not retried on every tick after a failure either: the error stays shown until an answer comes
    const wantUsage = !this._usageAsked || Date.now() - this._usageAsked >= USAGE_MAX_AGE_MS;
    if (wantUsage) {
      this._usageAsked = Date.now();
    }
    const [tags, ps, queue, usage] = await Promise.allSettled([
      wantTags ? requestAPI<{ models: IModelTag[] }>('api/tags') : Promise.resolve(null),
      up ? requestAPI<{ models: IRunningModel[] }>('api/ps') : Promise.resolve({ models: [] }),
      requestAPI<IQueue>('queue'),
      wantUsage ? requestAPI<IUsage>(`usage?days=${USAGE_DAYS}`) : Promise.resolve(null)
    ]);
    if (tags.status === 'fulfilled') {
      if (tags.value) {
        this._tags = tags.value.models ?? [];
        this._tagsFetched = Date.now();
      }
    } else {
      errors.push(`Models: ${messageOf(tags.reason)}`);
    }
    if (ps.status === 'fulfilled') {
      this._running = ps.value?.models ?? [];
    } else {
      this._running = [];
      errors.push(`Loaded models: ${messageOf(ps.reason)}`);
    }
    if (queue.status === 'fulfilled') {
      this._queue = queue.value;
    } else {
      errors.push(`Queue: ${messageOf(queue.reason)}`);
    }
    if (usage.status === 'fulfilled') {
      if (usage.value) {
        this._usage = usage.value;
        this._usageError = null;
      }
    } else {
      this._usageError = `Usage: ${messageOf(usage.reason)}`;
    }
    this._errors = errors;
    this._loaded = true;
    this.stateChanged.emit();
  }

  private _poll: Poll;
  private _visible = false;
  private _loaded = false;
  private _busy = false;
  private _state: IBackendState | null = null;
  private _tags: IModelTag[] = [];
  private _tagsFetched = 0;
  private _wasUp = false;
  private _running: IRunningModel[] = [];
  private _queue: IQueue | null = null;
  private _usage: IUsage | null = null;
  private _usageAsked = 0;
  private _usageError: string | null = null;
  private _errors: string[] = [];
  private _actionError: string | null = null;
}
