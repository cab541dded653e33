package cdc

// SetHook makes c call f at named points of its stream ("commit:received",
// "commit:applied"). Set it before Run.
func SetHook(c *Consumer, f func(point string)) { c.hook = f }
