// Package keyspec owns the Redis key of a cached row: the cache tag that
// asks for caching, the key template, how primary-key values become key
// text, and the canonical spelling that makes every spelling of a key give
// the key of the row the database finds. It needs a model's GORM schema and
// nothing of the plugin, so that code outside the plugin (change-data
// capture) builds the same keys from a table's column values.
//
// # Keys
//
// A key names one row of one model. By default it is
//
//	{prefix}:{table}:{pk}
//
// where prefix is the plugin's key namespace (Config.Prefix), table the
// model's table name, escaped, and pk the primary-key values in schema
// order, each written as a component (below) and joined by ':'. A composite
// key (a, b) of users is "wt:users:a:b".
//
// The tag's key word replaces the default with a template: literal text
// and the placeholders {prefix}, {table} (escaped), {pk} (every key column,
// joined by ':') and a primary-key column by its column or field name
// ({id}, {ID}). Every key column must appear, and two placeholders must be
// separated by text holding a ':', so that no two rows share a key. A
// template without {prefix} is placed under it: "user:{id}" gives
// "wt:user:42". Literal text is used as written; "{{" and "}}" write a
// literal brace.
//
// # Hash tags
//
// Redis Cluster hashes only a key's hash tag when it has one: the text
// between the first '{' and the first '}' after it, if not empty. A
// template writes one with doubled braces, "order:{{{tenant}}}:{id}" gives
// "wt:order:{acme}:7", so that every order of a tenant lives in one slot.
// A template holds at most one hash tag, never empty, and a prefix with a
// brace cannot be combined with one (the prefix's brace would come first).
// Components escape '{' and '}', so a key value can neither open nor close
// a tag: the tag is always exactly what the template says. An empty value
// inside a tag ("{}") makes Redis hash the whole key. [Slot] computes the
// slot as Redis does.
//
// # Components
//
// Integers are written in decimal, with a '-' when negative; []byte in
// lower-case hex. Strings are percent-escaped: '%', ':', '{', '}', bytes
// below 0x20 and 0x7f become "%XX" in upper-case hex, so a component never
// holds a raw ':' or brace and distinct values give distinct keys ("a:b" is
// "a%3Ab", "a%b" is "a%25b"). A fmt.Stringer (a UUID type) is written as
// its String, escaped; another driver.Valuer as its value. Of what remains,
// integer and string kinds are written as above, byte arrays in hex, and
// anything else as fmt.Sprint gives it, escaped.
//
// # Canonical forms
//
// A lookup value is first converted to the key field's Go type as GORM
// would assign it ([Spec.Normalize]). An integer key spelled as text is
// read as PostgreSQL reads integer input, so "42", "042" and " +42 " all
// give the key of row 42. A uuid column held in a Go string is written in
// PostgreSQL's spelling, lower case with hyphens, whatever spelling was
// given (upper case, braces, hyphens after any group of four digits).
//
// Other columns may compare loosely: citext, char(n), non-deterministic
// collations, or string columns whose type is not yet known. [Spec.Loose]
// reports such a model; the plugin then serves an entry only when it holds
// a row of exactly the key's spelling and never writes a tombstone there.
// [Spec.Resolve] asks PostgreSQL's catalog how the string key columns
// compare, once per model.
package keyspec
