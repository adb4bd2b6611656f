export * from 'j1msky';
export { default } from 'j1msky';
