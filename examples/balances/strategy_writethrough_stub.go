//go:build !writethrough

package main

import (
	"errors"

	"github.com/redis/go-redis/v9"
	"gorm.io/gorm"
)

// pluginBuiltIn reports whether strategy 3 is in this build.
const pluginBuiltIn = false

// openWritethrough stands in for strategy 3 until the plugin is built in
// (go build -tags writethrough).
func openWritethrough(*gorm.DB, redis.UniversalClient, string, config) (strategy, error) {
	return nil, errors.New("built without the plugin: build with -tags writethrough")
}
