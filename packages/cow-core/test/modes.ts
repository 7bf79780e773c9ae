/** The data modes every cow-core suite runs in (ext4 data=ordered and data=journal). */
export const DATA_MODES = ['ordered', 'journal'] as const;
