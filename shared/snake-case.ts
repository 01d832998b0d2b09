// The one key style of what barman-ts writes for machines: snake_case, in every `--json`
// document and in backup.info (`backup_id`, `begin_lsn`), as PostgreSQL and Barman spell theirs.
// Code keeps camelCase; the conversion happens where a document is written.

/** `beginLsn` → `begin_lsn`, at the type level. */
export type SnakeCase<S extends string> = S extends `${infer C}${infer Rest}`
  ? `${C extends Lowercase<C> ? C : `_${Lowercase<C>}`}${SnakeCase<Rest>}`
  : S;

/** An object type with its (top-level) keys in snake_case. */
export type SnakeKeys<T> = { [K in keyof T as K extends string ? SnakeCase<K> : K]: T[K] };

/** `beginLsn` → `begin_lsn`. */
export function snakeCase(key: string): string {
  return key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

/** The same object with its top-level keys in snake_case (values as they are). */
export function snakeKeys<T extends object>(value: T): SnakeKeys<T> {
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [snakeCase(k), v])) as SnakeKeys<T>;
}
