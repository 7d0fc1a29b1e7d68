package store

import "github.com/ddbgo/ddb/internal/errkind"

// The kinds of the store's errors (see package errkind).

func (e *ForbiddenError) Kind() errkind.Kind       { return errkind.Forbidden }
func (e *SchemaDeniedError) Kind() errkind.Kind    { return errkind.Schema }
func (e *SQLError) Kind() errkind.Kind             { return errkind.SQL }
func (e *ParamError) Kind() errkind.Kind           { return errkind.Param }
func (e *ResultTooLargeError) Kind() errkind.Kind  { return errkind.TooLarge }
func (e *StepBudgetError) Kind() errkind.Kind      { return errkind.StepBudget }
func (e *RequestIDReusedError) Kind() errkind.Kind { return errkind.RequestIDReused }
func (e *EntryTooLargeError) Kind() errkind.Kind   { return errkind.EntryTooLarge }
func (e *LoadInterruptedError) Kind() errkind.Kind { return errkind.LoadInterrupted }
