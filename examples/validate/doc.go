// Package validate holds tests that check the deployment examples.
package validate
